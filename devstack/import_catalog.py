"""`make import FILE=products.csv`: loads a catalog file of any size through the REST gateway's
POST /admin/products:batchUpsert, and `make import-sample` writes a file of generated products to try it with.

The file is CSV with the header `sku,name,description,category,price`, or JSON lines (`.jsonl`, `.ndjson`: one
object with those keys per line). It is read twice: first every row is checked against the catalog's own rules
(catalog_svc.admin) and no SKU may come twice, so a bad file is refused whole, with each bad row's line and field,
before anything is sent (`--skip-bad` leaves bad rows out instead, and names them); then its rows are sent in
batches of at most 1,000 that also fit the gateway's body limit, one after another, with a progress bar.

Interrupted and run again, an import sends its rows again: an upsert of a product as it already is changes nothing
and records nothing, so nothing is duplicated. To spare the rows already sent, the count of rows the catalog has
confirmed is kept beside the file (`<FILE>.progress`, with the file's size and time, so an edited file starts
over) and skipped by the next run; `--restart` ignores it. A batch that fails in transit (no connection, a cut
connection, a 5xx or a 429) is sent again, a few times, after a pause; a refusal (4xx) stops the import and names
the row.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential
from tqdm import tqdm

from catalog_svc.admin import MAX_BATCH, check_product
from catalog_svc.model import ProductRow
from devstack.stack import SECRETS_DIR
from gateway.routes import LARGE_BODY_ROUTES
from gateway.identity import issue_token
from shop_runtime.errors import ServiceError

DEFAULT_URL = "http://localhost:9000"
ROUTE = "/admin/products:batchUpsert"
FIELDS = ("sku", "name", "description", "category", "price")
# The gateway's limit of a batch's body (413 above it), and how far below it a batch stays.
MAX_BODY = LARGE_BODY_ROUTES[("post", ROUTE)]
BODY_MARGIN = 1024
# Attempts of one batch that fails in transit.
ATTEMPTS = 6
# Bad rows named in a refusal of the file, at most.
SHOWN_BAD = 20


@dataclass(frozen=True)
class Row:
    """One product of the file and the line it starts on."""

    line: int
    product: dict[str, object]


@dataclass(frozen=True)
class BadRow:
    """A row the catalog would refuse: its line, the field and why."""

    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


class ImportStopped(Exception):
    """The import stops: the file or the catalog refused something (a 4xx), or a batch kept failing in transit."""


def _records(path: Path) -> Iterator[tuple[int, dict[str, object] | None, BadRow | None]]:
    """Each row's line and its fields (each as the file gives it), or why it cannot be read."""
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as err:
                    yield number, None, BadRow(number, "line", f"not JSON: {err.msg}")
                    continue
                if not isinstance(value, dict):
                    yield number, None, BadRow(number, "line", "not a JSON object")
                    continue
                yield number, value, None
        return
    # utf-8-sig: a spreadsheet's export may begin with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ImportStopped(f"{path}: the CSV header must be {','.join(FIELDS)}, got {reader.fieldnames}")
        start = 2
        for record in reader:
            if None in record or any(v is None for v in record.values()):
                yield start, None, BadRow(start, "line", f"{len(FIELDS)} columns expected")
            else:
                yield start, dict(record), None
            start = reader.line_num + 1  # a quoted field may span lines


def _checked(line: int, fields: dict[str, object]) -> tuple[dict[str, object] | None, BadRow | None]:
    """The product as the route takes it, or its first bad field by the catalog's own rules."""
    if unknown := sorted(set(fields) - set(FIELDS)):
        return None, BadRow(line, unknown[0], "not a product field")
    price = fields.get("price")
    if isinstance(price, str) and price.strip().lstrip("-").isdigit():
        price = int(price)
    if not isinstance(price, int) or isinstance(price, bool):
        return None, BadRow(line, "price", f"a whole number expected, got {price!r}")
    text = {k: fields.get(k, "") for k in ("sku", "name", "description", "category")}
    if bad := next((k for k, v in text.items() if not isinstance(v, str)), None):
        return None, BadRow(line, bad, "text expected")
    row = ProductRow(sku=str(text["sku"]), name=str(text["name"]), description=str(text["description"]),
                     category=str(text["category"]), price=price, sales=0)
    try:
        check_product(row)
    except ServiceError as err:
        return None, BadRow(line, err.metadata.get("field", "?"), err.message)
    return {"sku": row.sku, "name": row.name, "description": row.description, "category": row.category,
            "price": row.price}, None


def read_rows(path: Path) -> tuple[list[BadRow], int]:
    """The first pass: every bad row (a SKU met before is one, with the line it was first on), and how many
    good rows the file has."""
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    good = 0
    for line, fields, unreadable in _records(path):
        if fields is None:
            assert unreadable is not None
            bad.append(unreadable)
            continue
        product, wrong = _checked(line, fields)
        if product is None:
            assert wrong is not None
            bad.append(wrong)
            continue
        sku = str(product["sku"])
        if sku in first_line:
            bad.append(BadRow(line, "sku", f"{sku!r} is also on line {first_line[sku]}"))
            continue
        first_line[sku] = line
        good += 1
    return bad, good


def good_rows(path: Path, bad_lines: set[int]) -> Iterator[Row]:
    """The second pass: the good rows, in file order."""
    for line, fields, _ in _records(path):
        if fields is None or line in bad_lines:
            continue
        product, _wrong = _checked(line, fields)
        if product is not None:
            yield Row(line, product)


def batches(rows: Iterator[Row], max_rows: int = MAX_BATCH,
            max_bytes: int = MAX_BODY - BODY_MARGIN) -> Iterator[list[Row]]:
    """The rows in batches of at most `max_rows` whose JSON body stays under `max_bytes`."""
    batch: list[Row] = []
    size = len(b'{"products":[]}')
    for row in rows:
        row_bytes = len(json.dumps(row.product, ensure_ascii=False).encode()) + 1
        if batch and (len(batch) >= max_rows or size + row_bytes > max_bytes):
            yield batch
            batch, size = [], len(b'{"products":[]}')
        batch.append(row)
        size += row_bytes
    if batch:
        yield batch


class _InTransit(Exception):
    """A batch that may not have arrived, or arrived at a moment the suite could not take it: sent again."""


def _transient(err: BaseException) -> bool:
    return isinstance(err, (_InTransit, httpx.TransportError))


class Sender:
    """Sends batches to the gateway, each again on a failure in transit (an upsert sent twice does it once)."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        self._http = httpx.Client(base_url=url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    def close(self) -> None:
        self._http.close()

    @retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(ATTEMPTS),
           wait=wait_exponential(multiplier=0.5, max=10), reraise=True)
    def send(self, batch: list[Row]) -> tuple[int, int]:
        """Upserts the batch; (created, updated). A 4xx stops the import, naming the row and field refused."""
        body = json.dumps({"products": [r.product for r in batch]}, ensure_ascii=False).encode()
        resp = self._http.post(ROUTE, content=body)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise _InTransit(f"{resp.status_code}: {resp.text[:200]}")
        if resp.status_code != 200:
            raise ImportStopped(_refusal(resp, batch))
        answer = resp.json()
        return int(answer.get("created", 0)), int(answer.get("updated", 0))


def _refusal(resp: httpx.Response, batch: list[Row]) -> str:
    try:
        info = next(d for d in resp.json().get("details", []) if "reason" in d)
    except (ValueError, StopIteration, AttributeError):
        return f"the gateway answered {resp.status_code}: {resp.text[:300]}"
    md = info.get("metadata", {})
    if "index" in md and md["index"].isdigit() and int(md["index"]) < len(batch):
        return f"line {batch[int(md['index'])].line}: {md.get('field', '?')}: {info['reason']}: " \
               f"{resp.json().get('message', '')}"
    return f"{resp.status_code} {info['reason']}: {resp.json().get('message', '')}"


@dataclass(frozen=True)
class Checkpoint:
    """The rows of a file the catalog has confirmed, kept beside it; valid for the same file (size and time)."""

    path: Path
    stamp: tuple[int, int]

    @classmethod
    def of(cls, file: Path) -> Checkpoint:
        st = file.stat()
        return cls(file.with_name(file.name + ".progress"), (st.st_size, st.st_mtime_ns))

    def done(self) -> int:
        """Rows confirmed by an earlier run of this file; 0 when none, or the file changed since."""
        try:
            kept = json.loads(self.path.read_text())
            return int(kept["rows"]) if tuple(kept["stamp"]) == self.stamp else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save(self, rows: int) -> None:
        """Records `rows` as confirmed: written whole, then renamed over the last, so a kill leaves one or the
        other."""
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps({"stamp": list(self.stamp), "rows": rows}))
        os.replace(part, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def run_import(path: Path, url: str, token: str, *, skip_bad: bool = False, restart: bool = False,
               max_rows: int = MAX_BATCH, progress: bool = True) -> dict[str, float]:
    """Imports the file; returns the counts and the rate. Raises ImportStopped when it stops."""
    bad, good = read_rows(path)
    if bad and not skip_bad:
        shown = "\n".join(f"  {b}" for b in bad[:SHOWN_BAD])
        more = f"\n  ... and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else ""
        raise ImportStopped(f"{path}: {len(bad)} bad row(s), nothing sent (--skip-bad leaves them out):\n{shown}{more}")
    for b in bad:
        print(f"skipped {b}", file=sys.stderr)
    checkpoint = Checkpoint.of(path)
    skip = 0 if restart else min(checkpoint.done(), good)
    rows: Iterator[Row] = good_rows(path, {b.line for b in bad})
    for _ in range(skip):
        next(rows)
    sender = Sender(url, token)
    created = updated = 0
    sent = skip
    started = time.monotonic()
    try:
        with tqdm(total=good, initial=skip, unit="products", unit_scale=True, disable=not progress,
                  desc=path.name) as bar:
            for batch in batches(rows, max_rows):
                made, changed = sender.send(batch)
                created, updated, sent = created + made, updated + changed, sent + len(batch)
                checkpoint.save(sent)
                bar.update(len(batch))
    finally:
        sender.close()
    checkpoint.clear()
    seconds = time.monotonic() - started
    return {"rows": good, "skipped_done": skip, "sent": good - skip, "created": created, "updated": updated,
            "bad": len(bad), "seconds": seconds, "per_second": (good - skip) / seconds if seconds else 0.0}


# The sample file's categories and words, for `make import-sample`.
_CATEGORIES = ("garden", "kitchen", "office", "outdoor", "pets", "tools", "audio", "games")
_WORDS = ("compact", "sturdy", "classic", "wireless", "bamboo", "steel", "foldable", "quiet", "travel", "deluxe")
_NOUNS = ("lamp", "kettle", "chair", "speaker", "leash", "drill", "board", "planter", "mug", "headset")


def generate(path: Path, count: int, seed: int = 1, prefix: str = "IM") -> None:
    """Writes `count` generated products (SKUs IM-000001 ..., or `prefix`-000001 ...) as CSV, or JSON lines for a
    .jsonl path."""
    rng = random.Random(seed)
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = None if jsonl else csv.writer(f)
        if writer:
            writer.writerow(FIELDS)
        for n in range(1, count + 1):
            noun, word = rng.choice(_NOUNS), rng.choice(_WORDS)
            product = (f"{prefix}-{n:06d}", f"{word.title()} {noun.title()} {n}",
                       f"A {word} {noun} for everyday use, item {n}.", rng.choice(_CATEGORIES),
                       rng.randrange(10, 5000) * 1000)
            if writer:
                writer.writerow(product)
            else:
                f.write(json.dumps(dict(zip(FIELDS, product))) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.import_catalog", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a CSV (sku,name,description,category,price) or JSON-lines file")
    parser.add_argument("--url", default=os.environ.get("SHOP_URL", DEFAULT_URL), help="the REST gateway")
    parser.add_argument("--token", default=os.environ.get("SHOP_TOKEN", ""),
                        help="an admin's token (default: one from the local issuer, as `make token USER=ops "
                             "ROLE=admin` makes)")
    parser.add_argument("--skip-bad", action="store_true", help="leave bad rows out (each is named) and go on")
    parser.add_argument("--restart", action="store_true", help="send every row, even those an earlier run sent")
    parser.add_argument("--batch", type=int, default=MAX_BATCH, help=f"rows per batch, at most {MAX_BATCH}")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="write N generated products to FILE instead of importing it")
    args = parser.parse_args(argv)
    if args.generate is not None:
        generate(args.file, args.generate)
        print(f"wrote {args.generate} products to {args.file}")
        return 0
    if not 1 <= args.batch <= MAX_BATCH:
        parser.error(f"--batch must be within 1..{MAX_BATCH}")
    token = args.token or issue_token(SECRETS_DIR, "ops", "admin")
    try:
        done = run_import(args.file, args.url, token, skip_bad=args.skip_bad, restart=args.restart,
                          max_rows=args.batch, progress=sys.stderr.isatty() or bool(os.environ.get("SHOP_PROGRESS")))
    except ImportStopped as err:
        print(f"import stopped: {err}", file=sys.stderr)
        return 1
    except (httpx.TransportError, _InTransit) as err:
        print(f"import stopped: a batch failed {ATTEMPTS} times in transit ({err}); run it again to go on",
              file=sys.stderr)
        return 1
    already = f", {done['skipped_done']} sent by an earlier run" if done["skipped_done"] else ""
    print(f"imported {done['rows']} products from {args.file} ({done['created']} created, {done['updated']} updated"
          f"{already}; {done['bad']} bad rows skipped) in {done['seconds']:.1f} s: "
          f"{done['per_second']:.0f} products/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
