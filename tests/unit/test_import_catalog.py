"""`make import`'s reading of a file: every bad row named by line and field before anything is sent, SKUs met twice
refused, batches within both the row count and the gateway's body limit, and the checkpoint tied to the file."""

import json

import pytest

from devstack import import_catalog as imp


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_csv_rows_are_named_by_line_and_field(tmp_path):
    path = write(tmp_path, "p.csv", "sku,name,description,category,price\n"
                                    "A-1,Lamp,\"two\nlines\",home,1000\n"   # a quoted field over two lines
                                    "A 2,Lamp,,home,1000\n"                 # line 4
                                    "A-3,Lamp,,Home,1000\n"
                                    "A-4,Lamp,,home,ten\n"
                                    "A-1,Again,,home,5\n"
                                    "A-6,Lamp,,home\n"
                                    "A_7.x,Lamp,,home,2000000000\n")
    bad, good = imp.read_rows(path)
    assert [(b.line, b.field) for b in bad] == [(4, "sku"), (5, "category"), (6, "price"), (7, "sku"), (8, "line")]
    assert "line 2" in bad[3].message
    assert good == 2
    assert [r.line for r in imp.good_rows(path, {b.line for b in bad})] == [2, 9]


def test_a_csv_with_another_header_is_refused(tmp_path):
    path = write(tmp_path, "p.csv", "sku,name,price\nA-1,Lamp,5\n")
    with pytest.raises(imp.ImportStopped):
        imp.read_rows(path)


def test_json_lines_rows_are_checked_the_same_way(tmp_path):
    rows = ['{"sku": "J-1", "name": "Mug", "description": "", "category": "kitchen", "price": 5000}', "",
            '{"sku": "J-2", "name": "Mug", "category": "kitchen", "price": 1.5}', "not json", "[1]",
            '{"sku": "J-3", "name": "Mug", "category": "kitchen", "price": "7000", "colour": "red"}',
            '{"sku": "J-4", "name": "Mug", "category": "kitchen", "price": "7000"}']
    bad, good = imp.read_rows(write(tmp_path, "p.jsonl", "\n".join(rows) + "\n"))
    assert [(b.line, b.field) for b in bad] == [(3, "price"), (4, "line"), (5, "line"), (6, "colour")]
    assert good == 2


def test_batches_keep_to_the_row_count_and_the_body_limit():
    small = [imp.Row(n, {"sku": f"S-{n}", "name": "n", "description": "", "category": "c", "price": 1})
             for n in range(2500)]
    assert [len(b) for b in imp.batches(iter(small))] == [1000, 1000, 500]
    assert [len(b) for b in imp.batches(iter(small), max_rows=300)] == [300] * 8 + [100]
    big = [imp.Row(n, {"sku": f"B-{n}", "name": "n", "description": "d" * 4000, "category": "c", "price": 1})
           for n in range(1000)]
    sent = list(imp.batches(iter(big)))
    assert sum(len(b) for b in sent) == 1000 and len(sent) > 1
    for batch in sent:
        body = json.dumps({"products": [r.product for r in batch]}).encode()
        assert len(body) < imp.MAX_BODY


def test_the_checkpoint_belongs_to_the_file_as_it_was(tmp_path):
    path = write(tmp_path, "p.csv", "sku,name,description,category,price\n")
    point = imp.Checkpoint.of(path)
    assert point.done() == 0
    point.save(3000)
    assert imp.Checkpoint.of(path).done() == 3000
    path.write_text("sku,name,description,category,price\nA-1,Lamp,,home,5\n")
    assert imp.Checkpoint.of(path).done() == 0
    point.clear()
    assert not point.path.exists()


def test_the_sample_file_imports_cleanly(tmp_path):
    for name in ("s.csv", "s.jsonl"):
        path = tmp_path / name
        imp.generate(path, 300)
        assert imp.read_rows(path) == ([], 300)


def test_a_byte_order_mark_before_the_header_is_no_bad_header(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes("\ufeffsku,name,description,category,price\nA-1,Lamp,,home,5\n".encode())
    assert imp.read_rows(path) == ([], 1)
