"""Interaction logs (which user had which item, when) as per-user item sequences.

    log = read_interactions("ml-100k/")        # a folder holding one .inter file, or an .inter / .csv / .tsv /
                                               # .parquet file with user, item and time columns
    log.items[t - ITEM_OFFSET]                 # the item id (as in the file) of item token t
    log.histories[u]                           # user u's item tokens, oldest first
    split = leave_one_out(log, max_length=50)  # training rows, and the validation and test targets

Item tokens share the text tokens' specials (PAD=0, MASK=3), so the text backbones and the
token-prediction losses run on item sequences unchanged; item i of the vocabulary is token
ITEM_OFFSET + i. The vocabulary is every item of the log in sorted order (by value when every id is a
number, else as text), so
the same log always gives the same tokens; the run saves it (items.json).

What a log may hold, and what happens to it (docs/recommendation.md):
- RecBole's atomic files: tab-separated, headers `name:type` (`user_id:token`); the `:type` is dropped.
  A `.user` / `.item` file of the same stem next to it gives user attributes / item titles.
- Rows without a user or an item are skipped (counted in a warning); so are exact duplicate events
  (same user, item and time). A user who had an item again at another time keeps both events.
- Each user's events are put in time order (stable: equal times keep the file's order); without a
  time column (interactions.time_column=''), the file's order is the time order.
- Ratings are not read: every event counts as the user having had the item (implicit feedback).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from selfsup.errors import DataError
from selfsup.tabular.table import read_table, sorted_values
from selfsup.text.tokenizer import NUM_SPECIAL, PAD

ITEM_OFFSET = NUM_SPECIAL
LOG_SUFFIXES = (".inter", ".csv", ".tsv", ".parquet")
SOURCES = "an .inter, .csv, .tsv or .parquet file of user, item and time columns, or a folder holding one .inter file"
# Leave-one-out needs one item to train on, one to validate with and one to test with.
MIN_SCORED_HISTORY = 3


@dataclass
class InteractionLog:
    users: list[str]                      # user ids as in the file; user u is users[u]
    items: list[str]                      # item ids as in the file; token ITEM_OFFSET + i is items[i]
    histories: list[list[int]]            # per user, item tokens, oldest first
    path: Path                            # the log file read
    skipped_rows: int = 0                 # rows without a user or item
    duplicates: int = 0                   # exact duplicate events dropped

    @property
    def vocab_size(self) -> int:
        return ITEM_OFFSET + len(self.items)

    @property
    def events(self) -> int:
        return sum(map(len, self.histories))

    def side_file(self, suffix: str) -> Path | None:
        """The atomic side file of the same stem (ml-100k.user next to ml-100k.inter), if there is one."""
        candidate = self.path.with_suffix(suffix)
        return candidate if candidate.is_file() else None


def find_log_file(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{path} holds {len(found)} .inter files, not one; pass the interaction file itself "
                            f"(--data {path}/<name>.inter), or {SOURCES}")
        return found[0]
    if not path.is_file():
        raise DataError(f"the interaction log {str(path)!r} does not exist; pass {SOURCES}")
    if path.suffix.lower() not in LOG_SUFFIXES:
        raise DataError(f"cannot read interactions from {path.name} (suffix {path.suffix!r}); pass {SOURCES}")
    return path


def read_atomic(path: Path) -> dict[str, list[str | None]]:
    """A table whose header names may carry RecBole's `:type` suffix (`user_id:token` -> `user_id`)."""
    columns = read_table(path)
    renamed = {name.split(":", 1)[0]: cells for name, cells in columns.items()}
    if len(renamed) != len(columns):
        raise DataError(f"{path}: two columns have the same name before their ':type' suffix; rename one")
    return renamed


def read_interactions(source: str | Path, user_column: str = "user_id", item_column: str = "item_id",
                      time_column: str = "timestamp") -> InteractionLog:
    """The log's events as per-user item sequences in time order (see the module docstring)."""
    path = find_log_file(source)
    columns = read_atomic(path)
    for what, name in (("user", user_column), ("item", item_column), ("time", time_column)):
        if name and name not in columns:
            hint = " (or interactions.time_column='' to take the file's order as the time order)" if what == "time" else ""
            raise DataError(f"{path.name} has no {what} column {name!r}; its columns are {', '.join(columns)}: "
                            f"set interactions.{what}_column to the right one{hint}")
    users, items = columns[user_column], columns[item_column]
    times = _times(columns[time_column], path) if time_column else [float(i) for i in range(len(users))]
    kept = [i for i in range(len(users)) if users[i] is not None and items[i] is not None]
    skipped = len(users) - len(kept)
    events = sorted({(users[i], items[i], times[i]): i for i in reversed(kept)}.values())   # first of duplicates
    duplicates = len(kept) - len(events)
    if not events:
        raise DataError(f"{path} has no event with both a user and an item")
    item_ids = sorted_values(items[i] for i in events)
    user_ids = sorted_values(users[i] for i in events)
    item_token = {item: ITEM_OFFSET + k for k, item in enumerate(item_ids)}
    user_index = {user: u for u, user in enumerate(user_ids)}
    timed: list[list[tuple[float, int, int]]] = [[] for _ in user_ids]
    for i in events:
        timed[user_index[users[i]]].append((times[i], i, item_token[items[i]]))
    histories = [[token for _, _, token in sorted(events_of_user)] for events_of_user in timed]
    if skipped or duplicates:
        print(f"warning: {path.name}: skipped {skipped} row(s) without a user or item and {duplicates} exact "
              "duplicate event(s)", file=sys.stderr)
    return InteractionLog(user_ids, item_ids, histories, path, skipped, duplicates)


def _times(cells: list[str | None], path: Path) -> list[float]:
    times = []
    for row, cell in enumerate(cells, start=2):
        try:
            value = float(cell) if cell is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{path}, line {row}: the time {cell!r} is not a number; every event needs one "
                            "(Unix seconds or any increasing number), or set interactions.time_column='' "
                            "to take the file's order")
        times.append(value)
    return times


def right_padded(rows: list[list[int]], length: int) -> torch.Tensor:
    """Rows of tokens (each at most `length`) -> int64 (N, length), PAD after each row's tokens."""
    out = torch.full((len(rows), length), PAD, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def windows(history: list[int], length: int) -> list[list[int]]:
    """A history cut into windows of `length` from its newest item back; a last window of one item
    is left out (it predicts nothing)."""
    cut = [history[max(0, end - length):end] for end in range(len(history), 0, -length)]
    return [w for w in cut if len(w) >= 2]


def user_item_matrix(histories: list[list[int]] | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Binary (users, vocab_size): 1 where the user had the item token (PAD columns stay 0)."""
    if isinstance(histories, torch.Tensor):
        rows = histories.long()
    else:
        from_lists = [torch.tensor(h, dtype=torch.long) for h in histories]
        rows = torch.nn.utils.rnn.pad_sequence(from_lists, batch_first=True, padding_value=PAD) if from_lists \
            else torch.zeros(0, 1, dtype=torch.long)
    matrix = torch.zeros(len(rows), vocab_size)
    matrix.scatter_(1, rows, 1.0)
    matrix[:, PAD] = 0.0
    return matrix


@dataclass
class HeldOutItems:
    """One held-out item per user: the model sees `histories` (the most recent items before it, right
    padded) and ranks every item; the items the user had before are not ranked (`seen`)."""
    users: torch.Tensor                   # int64 (U,): the user of each row
    histories: torch.Tensor               # int64 (U, L)
    targets: torch.Tensor                 # int64 (U,): the held-out item token
    seen: list[torch.Tensor]              # per row, the item tokens the user had before the target
    history_lengths: torch.Tensor         # int64 (U,): how many items the user had before (untruncated)

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, rows: torch.Tensor) -> "HeldOutItems":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return HeldOutItems(self.users[rows], self.histories[rows], self.targets[rows],
                            [self.seen[r] for r in rows.tolist()], self.history_lengths[rows])

    def truncated(self, length: int) -> "HeldOutItems":
        """The same rows with each history cut to its `length` most recent items (a cold-start view);
        the items excluded from the ranking stay those the user really had."""
        rows = []
        for row in self.histories.tolist():
            items = [t for t in row if t != PAD]
            rows.append(items[-length:])
        return HeldOutItems(self.users, right_padded(rows, self.histories.shape[1]), self.targets, self.seen,
                            self.history_lengths.clamp(max=length))


@dataclass
class LeaveOneOut:
    """Leave-one-out by time (SASRec, BERT4Rec): a user's last item is the test target, the one
    before it the validation target, the rest trains. Users with fewer than MIN_SCORED_HISTORY items
    train with all of theirs and are not scored."""
    train_histories: list[list[int]]      # per user, the items pretraining may see
    val: HeldOutItems
    test: HeldOutItems
    max_length: int
    scored_users: int = 0
    unscored_users: int = 0
    user_ids: list[str] = field(default_factory=list)

    def training_rows(self) -> torch.Tensor:
        """Every training history cut into windows of max_length (SASRec trains on the most recent
        max_length items; the windows before them are used too), right padded."""
        rows = [w for history in self.train_histories for w in windows(history, self.max_length)]
        if not rows:
            raise DataError("no user has two items to train on; the log needs longer histories")
        return right_padded(rows, self.max_length)

    def part(self, name: str) -> HeldOutItems:
        if name not in ("val", "test"):
            raise ValueError(f"a held-out part is 'val' or 'test', not {name!r}")
        return self.val if name == "val" else self.test


def leave_one_out(log: InteractionLog, max_length: int) -> LeaveOneOut:
    if max_length < 2:
        raise DataError(f"interactions.max_length must be >= 2, got {max_length}")
    train, parts = [], {"val": [], "test": []}
    for u, history in enumerate(log.histories):
        if len(history) < MIN_SCORED_HISTORY:
            train.append(list(history))
            continue
        train.append(history[:-2])
        parts["val"].append((u, history[:-2], history[-2]))
        parts["test"].append((u, history[:-1], history[-1]))
    if not parts["test"]:
        raise DataError(f"{log.path.name}: no user has {MIN_SCORED_HISTORY} or more items, so nothing can be held "
                        "out by leave-one-out; the log needs longer histories")
    held_out = {name: _held_out(rows, max_length) for name, rows in parts.items()}
    scored = len(parts["test"])
    return LeaveOneOut(train, held_out["val"], held_out["test"], max_length, scored, len(log.histories) - scored,
                       log.users)


def _held_out(rows: list[tuple[int, list[int], int]], max_length: int) -> HeldOutItems:
    return HeldOutItems(
        users=torch.tensor([u for u, _, _ in rows], dtype=torch.long),
        histories=right_padded([history[-max_length:] for _, history, _ in rows], max_length),
        targets=torch.tensor([target for _, _, target in rows], dtype=torch.long),
        seen=[torch.tensor(sorted(set(history)), dtype=torch.long) for _, history, _ in rows],
        history_lengths=torch.tensor([len(history) for _, history, _ in rows], dtype=torch.long))


def user_attributes(log: InteractionLog) -> dict[str, list[str | None]]:
    """Column -> value per user (in log.users order; None where the .user file has no row or value)."""
    path = log.side_file(".user")
    if path is None:
        return {}
    columns = read_atomic(path)
    key = next((name for name in ("user_id", "user") if name in columns), None)
    if key is None:
        raise DataError(f"{path} has no user_id column; its columns are {', '.join(columns)}")
    row_of = {user: r for r, user in enumerate(columns[key]) if user is not None}
    return {name: [cells[row_of[user]] if user in row_of else None for user in log.users]
            for name, cells in columns.items() if name != key}


def item_titles(log: InteractionLog) -> list[str]:
    """A readable name per item (the .item file's first column with 'title' or 'name' in it; else the id)."""
    path = log.side_file(".item")
    if path is None:
        return list(log.items)
    columns = read_atomic(path)
    key = next((name for name in ("item_id", "item") if name in columns), None)
    title = next((name for name in columns if "title" in name or "name" in name), None)
    if key is None or title is None:
        return list(log.items)
    named = {item: name for item, name in zip(columns[key], columns[title]) if item is not None and name}
    return [named.get(item, item) for item in log.items]
