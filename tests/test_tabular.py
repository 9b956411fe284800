"""Tables: reading, preprocessing fitted on training rows only, the tabular backbone, and the SCARF
and VIME pretext tasks checked against their papers' formulas written out as loops."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones import build_backbone
from selfsup.config import ConfigError, load_config
from selfsup.data import DataError
from selfsup.evaluate.knn import knn_accuracy
from selfsup.methods import method_class
from selfsup.methods.scarf import SCARFConfig, corrupted_count, scarf_corrupt
from selfsup.methods.vime import VIMEConfig, vime_corrupt
from selfsup.tabular import (TablePreprocessor, TableSet, categorical_codes, load_table, raw_features, read_table,
                             split_rows)


def write(path, text):
    path.write_text(text)
    return path


# ---- reading -----------------------------------------------------------------------------------------

def test_csv_with_missing_cells_and_quoted_delimiters(tmp_path):
    path = write(tmp_path / "t.csv", 'age,city,note\n31,"Paris, FR",ok\n,NA,?\n 7 ,null,"a ""b"""\n\nN/A,Rome,None\n')
    columns = read_table(path)
    assert list(columns) == ["age", "city", "note"]
    assert columns["age"] == ["31", None, "7", None]
    assert columns["city"] == ["Paris, FR", None, None, "Rome"]
    assert columns["note"] == ["ok", None, 'a "b"', None]


def test_tsv_and_a_sniffed_delimiter(tmp_path):
    tsv = read_table(write(tmp_path / "t.tsv", "a\tb\n1\tx,y\n2\tz\n"))
    assert tsv == {"a": ["1", "2"], "b": ["x,y", "z"]}
    semicolons = read_table(write(tmp_path / "t.csv", "a;b\n1,5;x\n"))
    assert semicolons == {"a": ["1,5"], "b": ["x"]}


def test_ragged_row_names_its_line(tmp_path):
    path = write(tmp_path / "t.csv", 'a,b\n1,"two\nlines"\n3,4\n5,6,7\n')
    with pytest.raises(DataError, match=r"line 5: 3 cells where the header has 2 columns"):
        read_table(path)


@pytest.mark.parametrize("text, message", [("a,b\n", "empty table"), ("", "empty table"),
                                           ("a,b,a\n1,2,3\n", "duplicate column names 'a'")])
def test_empty_tables_and_duplicate_columns_are_refused(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        read_table(write(tmp_path / "t.csv", text))


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv")


def test_parquet_without_its_extra_says_what_to_install(tmp_path):
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
        pytest.skip("pandas and pyarrow are installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pip install 'selfsup\[parquet\]'"):
        read_table(write(tmp_path / "t.parquet", "not really parquet"))


# ---- preprocessing -----------------------------------------------------------------------------------

TRAIN = {"x": ["1", "2", "3", None], "const": ["5", "5", "5", "5"], "color": ["red", "blue", None, "red"],
         "zip": ["10", "2", "10", "2"], "id": ["a", "b", "c", "d"], "y": ["10", "2", "2", "10"]}
TEST = {"x": ["100", None], "const": ["6", "5"], "color": ["green", "blue"], "zip": ["99", "2"],
        "id": ["e", "f"], "y": ["2", "10"]}


def fitted():
    return TablePreprocessor().fit(TRAIN, label_column="y", categorical=["zip"], ignore="id")


def test_preprocessor_infers_types_and_fits_on_the_training_rows_only():
    pre = fitted()
    assert pre.numeric_columns == ["x", "const"] and pre.categorical_columns == ["color", "zip"]
    assert pre.means == [2.0, 5.0] and pre.stds[0] == pytest.approx(math.sqrt(2 / 3)) and pre.stds[1] == 1.0
    assert pre.vocabularies == [["blue", "red"], ["2", "10"]]          # sorted; numbers by value
    assert pre.cardinalities == [3, 3] and pre.classes == ["2", "10"]
    # Fitting on train + test rows would move the means and grow the vocabularies: fitting on train does not.
    both = {k: TRAIN[k] + TEST[k] for k in TRAIN}
    assert TablePreprocessor().fit(both, "y", ["zip"], ["id"]).means != pre.means

    values, labels = pre.transform(TRAIN)
    assert values.dtype == torch.float32 and values.shape == (4, 4) and labels.tolist() == [1, 0, 0, 1]
    expected_x = [(v - 2.0) / math.sqrt(2 / 3) for v in (1, 2, 3)] + [0.0]     # missing numeric -> 0 (the mean)
    assert values[:, 0].tolist() == pytest.approx(expected_x)
    assert values[:, 1].tolist() == [0.0] * 4                                   # std 0 -> 1
    assert values[:, 2].tolist() == [2, 1, 0, 2] and values[:, 3].tolist() == [2, 1, 2, 1]


def test_unknown_categories_become_zero_and_unseen_labels_are_refused():
    pre = fitted()
    values, labels = pre.transform(TEST)
    assert values[:, 0].tolist() == pytest.approx([98 / math.sqrt(2 / 3), 0.0])
    assert values[:, 1].tolist() == [1.0, 0.0]
    assert values[:, 2].tolist() == [0, 1] and values[:, 3].tolist() == [0, 1]   # green, 99 unseen -> 0
    assert labels.tolist() == [0, 1]
    assert pre.transform({k: v for k, v in TEST.items() if k != "y"})[1] is None
    with pytest.raises(DataError, match=r"label\(s\) \['3'\].*never occur"):
        pre.transform({**TEST, "y": ["3", "2"]})
    with pytest.raises(DataError, match="column 'x' is numeric.*data row 2 holds 'abc'"):
        pre.transform({**TEST, "x": ["1", "abc"]})
    with pytest.raises(DataError, match="lacks the column"):
        pre.transform({k: v for k, v in TEST.items() if k != "color"})


@pytest.mark.parametrize("argument", [{"label_column": "label"}, {"categorical": ["colour"]}, {"ignore": "ids"}])
def test_an_unknown_column_name_lists_the_columns(argument):
    with pytest.raises(DataError, match="its columns are: x, const, color, zip, id, y"):
        TablePreprocessor().fit(TRAIN, **argument)


def test_save_and_load_give_the_same_transform(tmp_path):
    pre = fitted()
    pre.save(tmp_path / "table.json")
    assert json.loads((tmp_path / "table.json").read_text())["numeric_columns"] == ["x", "const"]
    again = TablePreprocessor.load(tmp_path / "table.json")
    for columns in (TRAIN, TEST):
        (a, la), (b, lb) = pre.transform(columns), again.transform(columns)
        assert torch.equal(a, b) and torch.equal(la, lb)
    with pytest.raises(DataError, match="not a table preprocessor"):
        TablePreprocessor.from_dict({"means": []})


def test_load_table_fits_on_the_given_rows_and_encodes_every_row(tmp_path):
    path = write(tmp_path / "t.csv", "v,c,y\n0,a,p\n2,b,q\n4,a,p\n1000,z,q\n")
    table, pre = load_table(path, label_column="y", rows=[0, 1, 2])
    assert pre.means == [2.0] and pre.vocabularies == [["a", "b"]]
    assert len(table) == 4 and table.name == "t" and table.classes == ["p", "q"]
    assert table.numeric_features == 1 and table.cardinalities == [3]
    assert table.values[3, 1] == 0 and table.labels.tolist() == [0, 1, 0, 1]
    again, _ = load_table(path, preprocessor=pre)
    assert torch.equal(again.values, table.values)
    with pytest.raises(DataError, match="outside the table's 4 rows"):
        load_table(path, rows=[0, 4])


def test_split_rows_is_a_fixed_disjoint_split():
    train, test = split_rows(50, 0.2, seed=3)
    assert len(test) == 10 and sorted(train.tolist() + test.tolist()) == list(range(50))
    assert torch.equal(split_rows(50, 0.2, seed=3)[1], test) and not torch.equal(split_rows(50, 0.2, seed=4)[1], test)


def test_table_set_select_subset_and_raw_features():
    values = torch.tensor([[0.5, 2.0], [-1.0, 0.0], [1.5, 1.0]])
    table = TableSet(values, torch.tensor([1, 0, 1]), ["a", "b"], "t", 1, [3], {"table.json": "kept"})
    assert table.samples is values and len(table) == 3
    picked = table.select(torch.tensor([2, 0]))
    assert picked.values.tolist() == [[1.5, 1.0], [0.5, 2.0]] and picked.labels.tolist() == [1, 1]
    assert picked.assets == {"table.json": "kept"} and picked.cardinalities == [3]
    assert table.subset(2).values.shape == (2, 2) and table.subset(0) is table
    assert raw_features(table).tolist() == [[0.5, 0, 0, 1], [-1.0, 1, 0, 0], [1.5, 0, 1, 0]]
    with pytest.raises(DataError, match="2 columns but 1 numeric and 2 categorical"):
        TableSet(values, numeric_features=1, cardinalities=[3, 3])


# ---- backbone ----------------------------------------------------------------------------------------

def tiny_backbone(numeric=3, cardinalities=(4, 3), **kw):
    torch.manual_seed(0)
    return build_backbone("tabular_mlp", numeric_features=numeric, cardinalities=list(cardinalities),
                          dim=16, depth=2, dropout=0.0, **kw).eval()


def rows(b=6, numeric=3, cardinalities=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = [torch.randint(0, c, (b, 1), generator=g).float() for c in cardinalities]
    return torch.cat([torch.randn(b, numeric, generator=g), *codes], dim=1)


def test_backbone_shapes_and_categorical_codes_index_their_column_embeddings():
    backbone = tiny_backbone()
    x = rows()
    assert backbone(x).shape == (6, 16) and backbone.feature_dim == 16
    assert backbone.numeric_features == 3 and backbone.cardinalities == [4, 3]
    tokens = backbone.embedding(x)                                    # (B, F, d)
    table = backbone.embedding.table.weight
    assert torch.equal(tokens[:, 3], table[x[:, 3].long()])           # column 0's codes: rows 0..3
    assert torch.equal(tokens[:, 4], table[4 + x[:, 4].long()])       # column 1's codes: rows 4..6
    assert torch.allclose(tokens[:, :3], x[:, :3, None] * backbone.embedding.weight + backbone.embedding.bias)

    changed = x.clone()
    changed[0, 3] = (x[0, 3] + 1) % 4
    equal_code = x.clone()
    equal_code[0, 3] = x[0, 3] + 0.2                                  # rounds to the same code
    out = backbone(x)
    assert not torch.allclose(backbone(changed)[0], out[0]) and torch.equal(backbone(changed)[1:], out[1:])
    assert torch.equal(backbone(equal_code), out)
    out_of_range = x.clone()
    out_of_range[:, 4] = 7.0                                          # unknown codes read as code 0
    zero = x.clone()
    zero[:, 4] = 0.0
    assert torch.equal(backbone(out_of_range), backbone(zero))
    with pytest.raises(ValueError, match=r"expects rows \(B, 5\)"):
        backbone(x[:, :4])
    assert categorical_codes(out_of_range, 3, [4, 3])[:, 1].tolist() == [0] * 6


def test_backbone_with_only_numeric_or_only_categorical_columns():
    assert tiny_backbone(numeric=4, cardinalities=())(torch.randn(5, 4)).shape == (5, 16)
    assert tiny_backbone(numeric=0, cardinalities=(2, 5))(rows(5, 0, (2, 5))).shape == (5, 16)


@pytest.mark.parametrize("norm,rows_independent", [("batch", False), ("layer", True), ("none", True)])
def test_backbone_norm_decides_whether_a_row_depends_on_its_batch(norm, rows_independent):
    torch.manual_seed(0)
    backbone = build_backbone("tabular_mlp", numeric_features=4, cardinalities=[3], dim=16, dropout=0.0, norm=norm)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in backbone.modules()) == (norm == "batch")
    assert any(isinstance(m, torch.nn.LayerNorm) for m in backbone.modules()) == (norm == "layer")
    x = rows(6, 4, (3,))
    alone = backbone(x[:3])
    together = backbone(x)[:3]
    assert torch.allclose(alone, together, atol=1e-6) == rows_independent
    with pytest.raises(ValueError, match="norm must be one of"):
        build_backbone("tabular_mlp", numeric_features=4, norm="group")


# ---- SCARF -------------------------------------------------------------------------------------------

def test_scarf_corrupts_a_fixed_count_per_row_with_values_of_the_same_column():
    x = torch.randn(2000, 10, generator=torch.Generator().manual_seed(0))   # every value tells its row and column
    corrupted, replaced = scarf_corrupt(x, 0.6, torch.Generator().manual_seed(0))
    assert corrupted_count(10, 0.6) == 6 and (replaced.sum(1) == 6).all()
    assert torch.equal(corrupted[~replaced], x[~replaced])
    assert (replaced.float().mean(0) - 0.6).abs().max() < 0.05      # every feature equally likely
    again, _ = scarf_corrupt(x, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(again, corrupted)
    small = x[:8]                                   # in a small batch, drawing the row itself would show
    corrupted, replaced = scarf_corrupt(small, 0.6, torch.Generator().manual_seed(1))
    for i, j in replaced.nonzero().tolist():
        donors = (small[:, j] == corrupted[i, j]).nonzero().flatten().tolist()
        assert len(donors) == 1 and donors[0] != i                  # another row's value of the same column
    with pytest.raises(ValueError, match="batch of >= 2 rows"):
        scarf_corrupt(x[:1], 0.6, torch.Generator())


def make_method(name, backbone, **cfg):
    cls = method_class(name)
    return cls(backbone, cls.config_class(**cfg), None)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_scarf_views_keep_the_anchor_and_the_loss_is_info_nce(temperature):
    method = make_method("scarf", tiny_backbone(), temperature=temperature, proj_hidden_dim=8, proj_dim=4).eval()
    x = rows(8)
    anchor, corrupted = method.views(x, torch.Generator().manual_seed(1))
    assert torch.equal(anchor, x) and not torch.equal(corrupted, x)
    loss, logs = method.loss([anchor, corrupted])

    a = method.projector(method.backbone(anchor)).tolist()
    c = method.projector(method.backbone(corrupted)).tolist()

    def cos(u, v):
        return sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))
    expected = 0.0
    for i in range(8):     # l_i = -log exp(s(a_i, c_i)/t) / sum_k exp(s(a_i, c_k)/t)
        expected -= math.log(math.exp(cos(a[i], c[i]) / temperature)
                             / sum(math.exp(cos(a[i], c[k]) / temperature) for k in range(8)))
    assert loss.item() == pytest.approx(expected / 8, rel=1e-5) and logs["loss"] == loss.detach()


# ---- VIME --------------------------------------------------------------------------------------------

def test_vime_masks_each_cell_with_probability_p_and_fills_it_from_its_column():
    x = torch.randn(4000, 10, generator=torch.Generator().manual_seed(0))
    corrupted, mask = vime_corrupt(x, 0.3, torch.Generator().manual_seed(0))
    assert abs(mask.float().mean().item() - 0.3) < 0.01
    assert (mask.float().mean(0) - 0.3).abs().max() < 0.03
    assert torch.equal(corrupted[~mask], x[~mask])
    for j in range(10):
        column = set(x[:, j].tolist())
        assert all(v in column for v in corrupted[mask[:, j], j].tolist())
    method = make_method("vime", tiny_backbone(numeric=10, cardinalities=()))
    views = method.views(x[:16], torch.Generator().manual_seed(0))
    assert torch.equal(views[1], x[:16]) and torch.equal(views[0], vime_corrupt(x[:16], 0.3,
                                                                                torch.Generator().manual_seed(0))[0])


def test_vime_loss_is_mask_bce_plus_alpha_times_reconstruction():
    method = make_method("vime", tiny_backbone(), alpha=2.0).eval()
    x = rows(8)
    x[:, 1] = 0.5                                  # a constant column: its cells never change
    corrupted, original = method.views(x, torch.Generator().manual_seed(2))
    loss, logs = method.loss([corrupted, original])

    h = method.backbone(corrupted)
    logits, pred = method.mask_estimator(h).tolist(), method.feature_estimator(h).tolist()
    target = (corrupted != original).tolist()
    assert not any(row[1] for row in target) and any(any(row) for row in target)
    bce = 0.0
    for b in range(8):
        for j in range(5):
            p = 1 / (1 + math.exp(-logits[b][j]))
            bce -= math.log(p) if target[b][j] else math.log(1 - p)
    bce /= 40
    recon = 0.0
    for b in range(8):
        for j in range(3):                                            # numeric: squared error
            recon += (pred[b][j] - x[b, j].item()) ** 2
        for j, (start, size) in enumerate([(3, 4), (7, 3)]):          # categorical: cross-entropy over codes
            column = pred[b][start:start + size]
            code = int(x[b, 3 + j])
            recon -= column[code] - math.log(sum(math.exp(v) for v in column))
    recon /= 40
    assert logs["mask_loss"].item() == pytest.approx(bce, rel=1e-5)
    assert logs["reconstruction_loss"].item() == pytest.approx(recon, rel=1e-5)
    assert loss.item() == pytest.approx(bce + 2.0 * recon, rel=1e-5)


def test_configs_refuse_bad_values_and_methods_declare_the_tabular_recipe():
    for bad in (SCARFConfig(corruption_rate=1.0), SCARFConfig(temperature=0.0), VIMEConfig(mask_prob=0.0),
                VIMEConfig(alpha=-1.0)):
        with pytest.raises(ValueError):
            bad.validate()
    for name in ("scarf", "vime"):
        cls = method_class(name)
        cls.config_class().validate()
        assert cls.modality == "tabular" and cls.recipe["backbone"]["name"] == "tabular_mlp"
        assert cls.recipe["optim"]["name"] == "adamw"
    with pytest.raises(ConfigError, match="backbone.norm must be one of batch, layer, none"):
        load_config(overrides=["method.name=scarf", "backbone.norm=group"])


# ---- learning ----------------------------------------------------------------------------------------

def clustered_table(n=600, seed=0):
    """4 clusters seen in 4 numeric and 2 categorical columns, hidden among 12 numeric and 2 categorical
    noise columns: a random encoder mixes all columns alike, a pretext task must find what they share."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    informative = torch.randn(4, 4, generator=g)[y] * 1.5 + torch.randn(n, 4, generator=g)
    numeric = torch.cat([informative, torch.randn(n, 12, generator=g)], dim=1)
    numeric = ((numeric - numeric.mean(0)) / numeric.std(0))[:, torch.randperm(16, generator=g)]
    follows_cluster = torch.rand(n, 2, generator=g) < 0.7
    categorical = torch.where(follows_cluster, y[:, None] + 1, torch.randint(1, 5, (n, 2), generator=g))
    noise = torch.randint(1, 5, (n, 2), generator=g)
    return torch.cat([numeric, categorical.float(), noise.float()], dim=1), y


@pytest.mark.parametrize("name", ["scarf", "vime"])
def test_short_training_lowers_the_loss_and_beats_random_init_on_knn(name):
    x, y = clustered_table()
    torch.manual_seed(0)
    backbone = build_backbone("tabular_mlp", numeric_features=16, cardinalities=[5] * 4, dim=64, depth=2,
                              dropout=0.0)
    method = make_method(name, backbone)

    def knn() -> float:
        method.eval()
        feats = F.normalize(method.embed(x), dim=1)
        method.train()
        return knn_accuracy(feats[:480], y[:480], feats[480:], y[480:], k=20, temperature=0.1)

    at_init = knn()
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3, weight_decay=1e-5)
    gen, order = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    losses = []
    for _ in range(100):
        loss, _ = method.loss(method.views(x[torch.randperm(480, generator=order)[:128]], gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10]), losses
    trained = knn()
    assert trained > at_init + 0.05, (at_init, trained)
