import numpy as np
import pytest

from lmopt.fed import FedKSeed, Ferret, MalformedMessage, decode, encode, run_federated
from lmopt.fed.messages import index_dtype


def expected_size(message):
    """The wire size from the layout in lmopt.fed.messages' docstring, computed independently."""
    size = 8
    for name, v in message.items():
        size += 2 + len(name.encode()) + 1
        if isinstance(v, np.ndarray):
            size += 2 + 8 * v.ndim + v.nbytes
        elif isinstance(v, str):
            size += 4 + len(v.encode())
        else:
            size += 8
    return size


def test_roundtrip_and_size():
    msg = {"round": 3, "lr": 0.5, "name": "fedkseed", "idx": np.arange(5, dtype=np.uint16),
           "val": np.linspace(0, 1, 5, dtype=np.float32), "m": np.ones((2, 3), dtype=np.float64),
           "empty": np.zeros(0, dtype=np.float32)}
    data = encode(msg)
    assert len(data) == expected_size(msg)
    back = decode(data)
    assert back.keys() == msg.keys()
    for k, v in msg.items():
        if isinstance(v, np.ndarray):
            assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
        else:
            assert back[k] == v


@pytest.mark.parametrize("bad, match", [(b"XXXX\x00\x00\x00\x00", "magic"), (b"LMF1\x01\x00\x00\x00", "truncated")])
def test_decode_rejects_garbage(bad, match):
    with pytest.raises(MalformedMessage, match=match):
        decode(bad)


def test_decode_rejects_trailing_bytes_and_truncation():
    data = encode({"a": np.arange(4, dtype=np.float32)})
    with pytest.raises(MalformedMessage, match="unexpected bytes"):
        decode(data + b"\x00")
    with pytest.raises(MalformedMessage, match="truncated"):
        decode(data[:-1])


def test_encode_refuses_unsupported_values():
    with pytest.raises(TypeError, match="dtype"):
        encode({"a": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(TypeError, match="booleans"):
        encode({"a": True})


def test_index_dtype():
    assert index_dtype(4096) == np.uint16 and index_dtype(1 << 16) == np.uint16 and index_dtype(70000) == np.uint32


def test_loop_counts_the_encoded_sizes(problem):
    """Each round's byte counts are the sizes of the messages the server and the clients write."""
    method = FedKSeed(num_seeds=64, lr=1e-2, eps=1e-3, local_steps=7)
    sizes = []
    res = run_federated(method, problem.params, problem.names, problem.loss, problem.clients(2), 3,
                        transport=lambda r, c, b: sizes.append((r, c, len(b), expected_size(decode(b)))) or b)
    for r, c, n, exp in sizes:
        assert res.rounds[r - 1].bytes_up[c] == n == exp
    # 6 bytes per ZO step (uint16 index + float32 scalar) on top of a fixed header
    assert all(n - 6 * 7 == sizes[0][2] - 6 * 7 for _, _, n, _ in sizes)
    problem.reset()
    res8 = run_federated(FedKSeed(num_seeds=64, lr=1e-2, eps=1e-3, local_steps=8), problem.params, problem.names,
                         problem.loss, problem.clients(2), 1)
    assert res8.rounds[0].bytes_up[0] - res.rounds[0].bytes_up[0] == 6
    # downloads: round 1 carries no update; round 2 carries round 1's (index, value) list, 6 bytes per seed
    used = res.rounds[0].details["seeds_used"]
    assert res.rounds[1].bytes_down[0] - res.rounds[0].bytes_down[0] == 6 * used + 4 + 4


def test_the_bytes_counted_are_those_sent(problem):
    """What the transport delivers is what is counted (a truncated reply counts its truncated size)."""
    res = run_federated(FedKSeed(num_seeds=64, local_steps=3), problem.params, problem.names, problem.loss,
                        problem.clients(2), 1, transport=lambda r, c, b: b[:11] if c == 1 else b)
    assert res.rounds[0].bytes_up[1] == 11 and "malformed" in res.rounds[0].rejected[1]


def test_clients_draw_their_own_seeds_and_batches(problem):
    seen = {}
    run_federated(FedKSeed(num_seeds=4096, local_steps=20), problem.params, problem.names, problem.loss,
                  {0: problem.clients(1)[0], 1: problem.clients(1)[0]}, 1,
                  transport=lambda r, c, b: seen.update({c: decode(b)["idx"].tolist()}) or b)
    assert seen[0] != seen[1]


def test_ferret_reply_is_six_bytes_per_coordinate(problem):
    method = Ferret(num_seeds=20, lr=0.1, local_steps=4, n_accum=1)
    seen = []
    run_federated(method, problem.params, problem.names, problem.loss, problem.clients(2), 1,
                  transport=lambda r, c, b: seen.append(decode(b)) or b)
    reply = seen[0]
    coords = sum(len(reply[f"g{g}_idx"]) for g in range(reply["num_groups"]))
    assert all(reply[f"g{g}_idx"].dtype == np.uint16 and reply[f"g{g}_val"].dtype == np.float32
               for g in range(reply["num_groups"]))
    assert len(encode(reply)) == expected_size(reply)
    assert sum(reply[f"g{g}_idx"].nbytes + reply[f"g{g}_val"].nbytes for g in range(reply["num_groups"])) == 6 * coords
