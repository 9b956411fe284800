"""The shared FIFO Queue (momentum.py): order, wrap-around, oversized pushes, no gradient, state round-trip."""
import io

import pytest
import torch

from selfsup.methods.momentum import Queue


def rows(*values):
    """Rows [v, v] for each value: easy to read back."""
    return torch.tensor([[float(v), float(v)] for v in values])


def test_fifo_order_before_the_queue_is_full():
    q = Queue(5, 2)
    q.push(rows(1, 2))
    assert q.filled == 2 and int(q.pointer) == 2 and not q.full
    q.push(rows(3))
    torch.testing.assert_close(q.contents(), rows(1, 2, 3))
    torch.testing.assert_close(q.items[:3], rows(1, 2, 3))


def test_wrap_around_overwrites_the_oldest_and_contents_is_oldest_first():
    q = Queue(4, 2)
    q.push(rows(1, 2, 3))
    q.push(rows(4, 5, 6))                  # 5, 6 wrap to slots 0, 1 and overwrite 1, 2
    assert q.filled == 4 and int(q.pointer) == 2 and q.full
    torch.testing.assert_close(q.items, rows(5, 6, 3, 4))
    torch.testing.assert_close(q.contents(), rows(3, 4, 5, 6))
    q.push(rows(7, 8))                     # lands exactly at the end: pointer back to 0
    assert int(q.pointer) == 0
    torch.testing.assert_close(q.contents(), rows(5, 6, 7, 8))


def test_push_larger_than_the_queue_keeps_the_last_rows():
    q = Queue(3, 2)
    q.push(rows(1))
    q.push(rows(10, 11, 12, 13, 14))
    assert q.filled == 3
    torch.testing.assert_close(q.contents(), rows(12, 13, 14))


def test_pushed_rows_carry_no_gradient():
    q = Queue(4, 3)
    x = torch.randn(2, 3, requires_grad=True)
    q.push(x * 2)
    assert not q.items.requires_grad
    assert not q.contents().requires_grad
    assert q.contents().grad_fn is None
    torch.testing.assert_close(q.contents(), (x * 2).detach())


def test_push_converts_to_the_queue_dtype():
    q = Queue(4, 2)
    q.push(rows(1, 2).to(torch.bfloat16))
    assert q.items.dtype == torch.float32
    torch.testing.assert_close(q.contents(), rows(1, 2))


def test_state_dict_round_trip_restores_items_pointer_and_count():
    torch.manual_seed(0)
    q = Queue(5, 2)
    q.push(rows(1, 2, 3))
    q.push(rows(4, 5, 6, 7))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    assert set(state) == {"items", "pointer", "count"}
    fresh = Queue(5, 2)
    assert fresh.filled == 0
    fresh.load_state_dict(state)
    assert fresh.filled == 5 and int(fresh.pointer) == int(q.pointer) == 2
    torch.testing.assert_close(fresh.contents(), rows(3, 4, 5, 6, 7))
    fresh.push(rows(8))
    q.push(rows(8))
    torch.testing.assert_close(fresh.contents(), q.contents())


def test_empty_and_bad_size():
    q = Queue(3, 4)
    assert q.contents().shape == (0, 4)
    with pytest.raises(ValueError, match="queue size"):
        Queue(0, 4)


def test_a_queue_pickles_with_its_host_copy_and_rereads_it_after_a_load():
    q = Queue(5, 2)
    q.push(rows(1, 2, 3))
    buffer = io.BytesIO()
    torch.save(q, buffer)                  # the whole module: its load hook must pickle too
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    assert saved.filled == 3
    torch.testing.assert_close(saved.contents(), rows(1, 2, 3))
    fresh = Queue(5, 2)
    fresh.load_state_dict(q.state_dict())
    assert fresh._host is None and fresh.filled == 3 and not fresh.full
    q.push(rows(4, 5))
    fresh.load_state_dict(q.state_dict())
    assert fresh.full                      # read at once: a compiled step reads it, a graph cannot read lazily
