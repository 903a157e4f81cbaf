"""README.md is a test: every shell command it documents runs as written.

The commands are read from README.md when the tests are collected, never copied here:

- every line of a fenced ```sh block (``\\`` continuations joined, ``# comments`` dropped);
- every inline code span under ``## Usage`` (the spider table's ``example`` column included)
  that starts with ``scrapy ``, ``.venv/bin/`` or ``python -m`` and has arguments.

(The measurement scripts under ``## Performance`` take minutes by design and are not run here.)

Each command must match exactly one case of :data:`CASES` (a regular expression searched in the
command as written), or its test fails: a new README command cannot slip by untested. A case
says how to prepare the working directory, which documented options to APPEND to shrink the
command (``-a max_images=5``, ``debug=fdr``, ``data.image_size=32``, ``trainer.max_epochs=1``,
``--port <free port>``, ``-s BING_BASE_URL=http://127.0.0.1:<port>/...``; a later ``-a``, ``-s``,
``--port`` or Hydra override wins over an earlier one), and what to check in what the command
produced. The command's own words are never changed, except for the placeholders of the README:
``<run>`` and ``<sweep>`` become the run and sweep the earlier commands made, and the bare
``scrapy`` / ``python`` of the README's prose stand for ``.venv/bin/scrapy`` / ``.venv/bin/python``
as the README says. Paths such as ``data``, ``data/insects``, ``exports/insects``, ``photo.jpg``,
``urls.txt`` are made in the working directory (a tmp folder with links to ``.venv/`` and
``scrapy.cfg``) before the command runs: the spiders crawl the demo site (demo/site.py) or fixture
answers of the search services (tests/crawler/fixtures) on 127.0.0.1, never the internet.

The trainer-side commands share one working directory, in README order, as a user runs them: the
run the single-run command makes is the ``runs/<run>`` of ``trainer.inspect`` and
``trainer.export``, whose export folder ``trainer.predict`` and ``trainer.serve`` read, and so on
(a case ``needs`` what another ``provides``, which runs first when it has not yet).

To add a README command: add one :class:`Case` to :data:`CASES`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
if str(REPO / "tests" / "crawler") not in sys.path:  # the local servers of the crawler tests
    sys.path.append(str(REPO / "tests" / "crawler"))

from fixture_server import FixtureServer  # noqa: E402
from uvicorn_thread import free_port  # noqa: E402

from demo.site import DemoSite  # noqa: E402

INLINE_PREFIXES = ("scrapy ", ".venv/bin/", "python -m ")
SHELL_FENCES = {"sh", "bash", "shell"}
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
TIMEOUT = 600  # seconds per command; the slow ones are sweeps of fast_dev_run trainings


# -- reading the README ------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One documented command: its text as written (comment dropped) and its README line."""

    text: str
    line: int

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def slug(self) -> str:
        words = [w for w in re.split(r"[^\w.=-]+", self.text) if w and w not in (".venv", "bin")]
        return f"L{self.line}-" + "-".join(words[:6])[:60]


def strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(markdown: str) -> list[Command]:
    """Every command README.md documents (see the module docstring for what counts)."""
    commands: list[Command] = []
    section = ""
    fence: str | None = None  # the open fence's language, None outside one
    pending, start = "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence is not None:
            if fence not in SHELL_FENCES:
                continue
            text = strip_comment(line)
            if not pending:
                start = number
            if text.endswith("\\"):
                pending += text[:-1].rstrip() + " "
                continue
            text = (pending + text.strip()).strip()
            pending = ""
            if text:
                commands.append(Command(" ".join(text.split()), start))
            continue
        if line.startswith("## "):
            section = line[3:].strip()
        if section == "Usage":
            for span in re.findall(r"`([^`\n]+)`", line):
                if span.startswith(INLINE_PREFIXES) and " " in span.strip():
                    commands.append(Command(span.strip(), number))
    return commands


# -- the session: local sites, working directories, outcomes -----------------------------------


@dataclass
class Outcome:
    """What running one command gave: exit status, output, where it ran, what it made."""

    command: Command
    argv: list[str]
    cwd: Path
    returncode: int
    output: str
    before: set[Path]
    response: bytes = b""  # a server's answer to its probe
    visited: dict[str, Any] = field(default_factory=dict)  # what the case's visit did on it
    made: dict[str, str] = field(default_factory=dict)  # placeholder -> value, from the check
    session_values: dict[str, str] = field(default_factory=dict)  # the values its needs made

    def new(self, pattern: str) -> list[Path]:
        """Paths matching ``pattern`` under the working directory that appeared with this run
        (``pattern`` under ``runs/`` or ``exports/``, or a top-level name)."""
        return sorted(p for p in self.cwd.glob(pattern) if p not in self.before)

    def tail(self) -> str:
        return f"$ {shlex.join(self.argv)}   (in {self.cwd})\n{self.output[-4000:]}"


class Session:
    """Local servers, the shared dataset, working directories and the outcome of each command."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.demo = DemoSite(per_label=30).start()
        self.search = FixtureServer(lambda path, query: search_route(self.search, path, query)).__enter__()
        self.outcomes: dict[Command, Outcome] = {}
        self.started: dict[Command, tuple[subprocess.Popen[str], list[str], Path, set[Path]]] = {}
        self._dataset: Path | None = None
        self._dataset_crawls: list[subprocess.Popen[str]] = []
        self._chain: Path | None = None
        self._labelled_site: DemoSite | None = None
        self.server_port = 0  # the free port a server command is given (mode "server")
        self.commands = readme_commands(README.read_text(encoding="utf-8"))

    def close(self) -> None:
        for proc in [*(p for p, *_ in self.started.values()), *self._dataset_crawls]:
            if proc.poll() is None:
                proc.kill()
        self.demo.stop()
        if self._labelled_site is not None:
            self._labelled_site.stop()
        self.search.__exit__(None, None, None)

    # working directories
    def workdir(self, name: str) -> Path:
        """A fresh folder with ``.venv`` and ``scrapy.cfg`` linked in, as in a checkout."""
        path = self.base / name
        path.mkdir(parents=True)
        (path / ".venv").symlink_to(Path(sys.prefix))
        (path / "scrapy.cfg").symlink_to(REPO / "scrapy.cfg")
        return path

    def start_dataset(self) -> None:
        """Start crawling :attr:`dataset` (two crawls at once), if not started yet."""
        if self._dataset_crawls or self._dataset:
            return
        for label, shape in (("ants", "circle"), ("bees", "square")):
            self._dataset_crawls.append(subprocess.Popen(
                [sys.executable, "-m", "scrapy", "crawl", "gallery", "-a", f"label={label}",
                 "-a", f"start_urls={self.demo.results_url(shape)}", "-a", "max_images=12",
                 "-s", f"DATASET_DIR={self.base / 'insects'}", "-s", "AUTOTHROTTLE_ENABLED=0"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))  # fmt: skip

    @property
    def dataset(self) -> Path:
        """A dataset crawled from the demo site: labels ``ants`` (circles) and ``bees`` (squares),
        12 images each."""
        if self._dataset is None:
            self.start_dataset()
            for proc in self._dataset_crawls:
                out, _ = proc.communicate(timeout=TIMEOUT)
                assert proc.returncode == 0, out[-3000:]
            self._dataset = self.base / "insects"
        return self._dataset

    @property
    def labelled_site(self) -> DemoSite:
        """A gallery site whose categories are the dataset's labels (``/search/ants``, ...)."""
        if self._labelled_site is None:
            self._labelled_site = DemoSite(self.dataset).start()
        return self._labelled_site

    @property
    def chain(self) -> Path:
        """The trainer side's shared working directory, ``data/insects`` in it."""
        if self._chain is None:
            self._chain = self.workdir("chain")
            shutil.copytree(self.dataset, self._chain / "data" / "insects")
        return self._chain

    # commands
    def case(self, command: Command) -> Case:
        matches = matching(command)
        if not matches:
            pytest.fail(f"README.md:{command.line}: `{command.text}` matches no case in tests/test_readme.py "
                        "CASES: add one (how to prepare, shrink and check it)")
        if len(matches) > 1:
            pytest.fail(f"README.md:{command.line}: `{command.text}` matches several cases: "
                        + ", ".join(c.pattern for c in matches))
        return matches[0]

    def provider(self, artefact: str) -> Command:
        for command in self.commands:
            # A command without exactly one case fails its own test, not every command after it.
            cases = matching(command)
            if len(cases) == 1 and cases[0].provides == artefact:
                return command
        pytest.fail(f"no README command makes {artefact!r} (a case with provides={artefact!r})")

    def made(self, artefact: str) -> bool:
        """Whether the command that makes ``artefact`` has run and passed."""
        for command, outcome in self.outcomes.items():
            if matching(command) and matching(command)[0].provides == artefact:
                return outcome.returncode == 0
        return False

    def placeholders(self, case: Case) -> dict[str, str]:
        values: dict[str, str] = {}
        for artefact in case.needs:
            values.update(self.outcome(self.provider(artefact), as_dependency=artefact).made)
        return values

    def launch(self, command: Command) -> None:
        """Start ``command`` (a case with ``parallel``) without waiting for it."""
        case = self.case(command)
        if command in self.started or command in self.outcomes or case.skip():
            return
        cwd = case.prepare(self, command)
        argv = build_argv(command, case, self, self.placeholders(case))
        if case.mode == "compose":
            assert argv[1:3] == ["-m", "trainer"], argv
            argv = [argv[0], "-c", COMPOSE, str(REPO / "conf"), *argv[3:]]
        before = snapshot(cwd)
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=os.environ | {"PYTHONUNBUFFERED": "1"})
        self.started[command] = (proc, argv, cwd, before)

    def outcome(self, command: Command, as_dependency: str | None = None) -> Outcome:
        """Run ``command`` once (or return how it went) and check it; fail if it failed."""
        case = self.case(command)
        if command not in self.outcomes:
            if reason := case.skip():
                pytest.skip(reason)
            if command not in self.started:
                if case.mode == "server":
                    self.outcomes[command] = run_server(self, command, case)
                else:
                    self.launch(command)
            if command in self.started:
                proc, argv, cwd, before = self.started.pop(command)
                try:
                    out, _ = proc.communicate(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate()
                self.outcomes[command] = Outcome(command, argv, cwd, proc.returncode, out, before)
            outcome = self.outcomes[command]
            outcome.session_values = self.placeholders(case)
            if outcome.returncode == 0:
                try:
                    outcome.made = case.check(outcome) or {}
                except Exception as exc:  # an assertion, or a file the command should have made
                    outcome.returncode = -1
                    outcome.output += f"\n[check failed] {exc!r}"
        outcome = self.outcomes[command]
        if outcome.returncode != 0:
            what = f"needs {as_dependency!r} from README.md:{command.line}, which failed" if as_dependency else "failed"
            pytest.fail(f"{what} (exit status {outcome.returncode}):\n{outcome.tail()}", pytrace=False)
        return outcome


def matching(command: Command) -> list[Case]:
    return [case for case in CASES if re.search(case.pattern, command.text)]


def snapshot(cwd: Path) -> set[Path]:
    """What is there before a command runs: the top level, and all of ``runs/`` and ``exports/``."""
    return {*cwd.glob("*"), *cwd.glob("runs/**/*"), *cwd.glob("exports/**/*")}


def build_argv(command: Command, case: Case, session: Session, values: dict[str, str]) -> list[str]:
    argv = command.argv
    if argv[0] in ("scrapy", "python"):  # the README's shorthand for .venv/bin/<it>
        argv[0] = f".venv/bin/{argv[0]}"
    for key, value in values.items():
        argv = [word.replace(key, value) for word in argv]
    for key, value in case.rewrite(session.chain).items():
        argv = [word.replace(key, value) for word in argv]
    left = [word for word in argv if re.search(r"<\w[^>]*>", word)]
    assert not left, f"no value for the placeholders in {left} (a case needs= the command that makes it)"
    more = case.append(session)
    if "--" in argv and "--" in more:
        # python -m imageclf ... -- TRAINER_OVERRIDES: its own options are appended to its own
        # part, the trainer overrides to the trainer's part.
        at, extra = argv.index("--"), more.index("--")
        return [*argv[:at], *more[:extra], *argv[at:], *more[extra + 1 :]]
    return argv + more


def run_server(session: Session, command: Command, case: Case) -> Outcome:
    """Start a server command, wait until it answers one GET on its ``--port``, then stop it."""
    cwd = case.prepare(session, command)
    port = free_port()
    session.server_port = port
    argv = build_argv(command, case, session, session.placeholders(case))
    log = cwd / f"server-{port}.log"
    before = snapshot(cwd)
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    body, status, visited, note = b"", 1, {}, ""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{case.probe}", timeout=10) as response:
                    body, status = response.read(), (0 if response.status == 200 else response.status)
                break
            except OSError:
                time.sleep(0.5)
        if status == 0 and case.visit:
            try:
                visited = case.visit(f"http://127.0.0.1:{port}", body)
            except Exception as exc:  # noqa: BLE001 (reported as the command's failure)
                status, note = -1, f"\n[visit failed] {exc!r}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text(errors="replace") + note
    if status and proc.returncode not in (None, 0, -signal.SIGTERM):
        status = proc.returncode
    return Outcome(command, argv, cwd, status, output, before, response=body, visited=visited)


# -- search services played by one local server ------------------------------------------------

HTML = "text/html; charset=utf-8"
JSON = "application/json"


def search_route(server: FixtureServer, path: str, query: dict[str, str]) -> tuple[int, str, bytes] | None:
    """The fixture answers of each service, whatever the query (the checks read the catalog's)."""
    if path == "/bing/images/async":
        name = {"1": "async-page1.html", "36": "async-page2.html"}.get(query.get("first", ""), "async-end.html")
        return 200, HTML, server.fixture("bing", name)
    if path == "/duckduckgo/":
        return 200, HTML, server.fixture("duckduckgo", "search.html")
    if path == "/duckduckgo/i.js":
        page = "ijs-page2.json" if query.get("s") == "100" else "ijs-page1.json"
        return 200, JSON, server.fixture("duckduckgo", page)
    if path == "/wikimedia/api.php":
        page = "search-page2.json" if "gsroffset" in query else "search-page1.json"
        # Other pictures for another query (the one-command job searches once per label).
        tag = re.sub(r"\W+", "-", query.get("gsrsearch", "")).strip("-")
        return 200, JSON, server.fixture("wikimedia", page).replace(b"/img/", f"/img/{tag}-".encode())
    if path == "/openverse/v1/images/" and query.get("page") in ("1", "2"):
        return 200, JSON, server.fixture("openverse", f"images-page{query['page']}.json")
    return None


# -- preparing, shrinking, checking ------------------------------------------------------------


def own_workdir(session: Session, command: Command) -> Path:
    return session.workdir(command.slug)


def with_dataset(session: Session, command: Command) -> Path:
    """A working directory holding a copy of the crawled dataset as ``data``."""
    cwd = own_workdir(session, command)
    shutil.copytree(session.dataset, cwd / "data")
    (cwd / "data" / "catalog.csv").unlink(missing_ok=True)  # so `export` must write it
    return cwd


def with_urls_file(session: Session, command: Command) -> Path:
    cwd = own_workdir(session, command)
    lines = ["# three pictures", *(f"{session.search.base}/img/url-{n}.jpg" for n in range(3))]
    (cwd / "urls.txt").write_text("\n".join(lines) + "\n")
    return cwd


def in_chain(session: Session, command: Command) -> Path:
    return session.chain


def in_repo(session: Session, command: Command) -> Path:
    return REPO


def in_chain_with_photos(session: Session, command: Command) -> Path:
    """The chain, plus ``photo.jpg`` and ``photos/`` (two pictures) made from the dataset."""
    cwd = session.chain
    pictures = sorted((cwd / "data" / "insects").glob("*/*.*"))[:3]
    Image.open(pictures[0]).convert("RGB").save(cwd / "photo.jpg", "JPEG")
    (cwd / "photos").mkdir(exist_ok=True)
    for n, path in enumerate(pictures[1:]):
        Image.open(path).convert("RGB").save(cwd / "photos" / f"p{n}.png")
    return cwd


def in_chain_without(*relative: str) -> Callable[[Session, Command], Path]:
    """The chain with what the command is to rebuild removed first (``<run>`` / ``<sweep>`` resolved)."""

    def prepare(session: Session, command: Command) -> Path:
        cwd = session.chain
        values = session.placeholders(session.case(command))
        for rel in relative:
            for key, value in values.items():
                rel = rel.replace(key, value)
            target = cwd / rel
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return cwd

    return prepare


def hymenoptera_layout(session: Session, command: Command) -> Path:
    """``../shared/data/hymenoptera_data`` beside the working directory: a tiny ``train/``/``val/``
    copy of the crawled dataset (the real photos are not needed to see the command work)."""
    cwd = own_workdir(session, command)
    target = cwd.parent / "shared" / "data" / "hymenoptera_data"
    for label in ("ants", "bees"):
        pictures = sorted((session.dataset / label).iterdir())
        for split, part in (("train", pictures[:8]), ("val", pictures[8:])):
            (target / split / label).mkdir(parents=True, exist_ok=True)
            for path in part:
                shutil.copy(path, target / split / label / path.name)
    return cwd


def catalog(dataset: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(dataset / "catalog.sqlite") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM images").fetchall()


def stored(dataset: Path) -> list[sqlite3.Row]:
    return [row for row in catalog(dataset) if row["status"] == "stored"]


def crawled(spider: str, expect: int, query: str | None = None, licence: bool = False) -> Callable[[Outcome], None]:
    """Check: ``expect`` images stored under ``data/ants`` by ``spider`` (with the README's query)."""

    def check(outcome: Outcome) -> None:
        rows = stored(outcome.cwd / "data")
        assert len(rows) == expect, [dict(r) for r in catalog(outcome.cwd / "data")]
        assert {(r["label"], r["spider"]) for r in rows} == {("ants", spider)}
        assert len(list((outcome.cwd / "data" / "ants").iterdir())) == expect
        if query is not None:
            assert {r["query"] for r in rows} == {query}
        if licence:
            assert all(r["licence"] for r in rows), [dict(r) for r in rows]

    return check


def one_command_job(labels: tuple[str, ...], per_label: int) -> Callable[[Outcome], None]:
    """Check: ``python -m imageclf`` crawled each label into ``insects/dataset`` and compared
    the two default models in ``insects/runs``."""

    def check(outcome: Outcome) -> None:
        rows = stored(outcome.cwd / "insects" / "dataset")
        counts = {label: sum(r["label"] == label for r in rows) for label in labels}
        assert counts == dict.fromkeys(labels, per_label), counts
        table = csv_rows(outcome.cwd / "insects" / "runs" / "comparison.csv")
        assert sorted(r["model"] for r in table) == ["baseline_cnn", "resnet18"], table

    return check


def transfer_weights(session: Session, command: Command) -> Path:
    """The chain, plus ``models/<torchvision file name>``: the state dict of a freshly built
    network of the command's architecture, saved as torchvision's weights API would save it
    (ImageNet weights cannot be downloaded here)."""
    import torch
    import torchvision

    cwd = session.chain
    name = re.search(r"/models/([a-z0-9]+)-[\w-]+\.pth", command.text)
    arch, path = name.group(1), cwd / "models" / name.group(0).split("/models/")[1]
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    return cwd


def transferred(outcome: Outcome) -> None:
    """Check: one new run that loaded the weights file (its summary names it) and replaced the head."""
    made = [p for p in outcome.new("runs/**/summary.json") if "multirun" not in p.parts]
    assert len(made) == 1, made
    summary = json.loads(made[0].read_text())
    assert str(summary["weights"]).endswith(".pth") and summary["num_classes"] == 2, summary


def label_issues_found(model: str) -> Callable[[Outcome], dict[str, str]]:
    """Check: a new ``runs/<date>_<time>_label_issues_<model>/label_issues.csv`` with one row per
    stored image of the dataset, its columns as documented."""

    def check(outcome: Outcome) -> dict[str, str]:
        made = outcome.new(f"runs/*_label_issues_{model}/label_issues.csv")
        assert len(made) == 1, made
        rows = csv_rows(made[0])
        assert len(rows) == len(stored(outcome.cwd / "data" / "insects")), len(rows)
        assert {"path", "label", "suggested", "label_quality", "issue", "loss"} <= set(rows[0]), rows[0]
        date, time_, _ = made[0].parent.name.split("_", 2)
        return {"<date>": date, "<time>": time_}

    return check


def label_issues_reviewed(outcome: Outcome) -> None:
    """Check: the review page ranks the ants by the label-issue CSV's loss, highest first."""
    answer = json.loads(outcome.response)
    losses = [image["loss"] for image in answer["images"]]
    assert answer["total"] == 12 and None not in losses and losses == sorted(losses, reverse=True), answer


def comparison(models: int) -> Callable[[Outcome], dict[str, str]]:
    """Check: a new sweep folder under runs/multirun/ with one summary and table row per model."""

    def check(outcome: Outcome) -> dict[str, str]:
        made = outcome.new("runs/multirun/**/comparison.md")
        assert len(made) == 1, made
        sweep = made[0].parent
        assert len(csv_rows(sweep / "comparison.csv")) == models, (sweep / "comparison.md").read_text()
        assert len(list(sweep.glob("*/summary.json"))) == models
        return {"<sweep>": sweep.relative_to(outcome.cwd / "runs" / "multirun").as_posix()}

    return check


def one_run(outcome: Outcome) -> dict[str, str]:
    """Check: one new run folder (anywhere under runs/ but multirun/) with summary and checkpoints."""
    made = [p for p in outcome.new("runs/**/summary.json") if "multirun" not in p.parts]
    assert len(made) == 1, made
    run = made[0].parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "resnet18", summary
    assert list((run / "checkpoints").glob("*.ckpt")), list(run.rglob("*"))
    return {"<run>": run.relative_to(outcome.cwd / "runs").as_posix()}


def comparison_rebuilt(outcome: Outcome) -> None:
    """Check: the sweep's comparison (removed first) is back, one row per run."""
    sweep = outcome.cwd / outcome.argv[-1]
    assert (sweep / "comparison.md").is_file()
    assert len(csv_rows(sweep / "comparison.csv")) == 4


def diagnosed(outcome: Outcome) -> None:
    run = outcome.cwd / outcome.argv[-1]  # runs/<run>, as substituted
    for name in ("confusion_matrix.png", "confusion_matrix.csv", "classification_report.md"):
        assert (run / "diagnostics" / name).is_file(), sorted((run / "diagnostics").iterdir())


def summarised(outcome: Outcome) -> None:
    """Check: per-label counts of the dataset on stdout, and a contact sheet that decodes."""
    assert "ants" in outcome.output and "bees" in outcome.output, outcome.output
    assert "12" in outcome.output, outcome.output
    with Image.open(outcome.cwd / "sheet.png") as sheet:
        sheet.load()
        assert sheet.width >= 64 and sheet.height >= 2 * 32, sheet.size


def compared_all(outcome: Outcome) -> None:
    """Check: ``trainer.compare runs`` prints a table holding the runs made so far."""
    assert "resnet18" in outcome.output and "|" in outcome.output, outcome.output


def exported(outcome: Outcome) -> None:
    folder = outcome.cwd / "exports" / "insects"
    for name in ("model.safetensors", "classes.json", "config.json"):
        assert (folder / name).is_file(), sorted(folder.iterdir())
    assert json.loads((folder / "classes.json").read_text()) == ["ants", "bees"]


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def predicted_photos(outcome: Outcome) -> None:
    rows = csv_rows(outcome.cwd / "preds.csv")
    assert {r["path"] for r in rows} == {"photo.jpg", "photos/p0.png", "photos/p1.png"}, rows
    assert all(r["predicted"] in ("ants", "bees") and not r["error"] for r in rows), rows
    assert all(len(json.loads(r["top_k"])) == 2 for r in rows), rows  # --top-k 3 of two classes


def scored_dataset(outcome: Outcome) -> None:
    rows = csv_rows(outcome.cwd / "scores.csv")
    assert {r["path"] for r in rows} == {r["path"] for r in stored(outcome.cwd / "data" / "insects")}, rows[:3]
    assert all(r["label"] in ("ants", "bees") and float(r["loss"]) >= 0 for r in rows), rows[:3]


def dataset_checked(outcome: Outcome) -> None:
    assert len(stored(outcome.cwd / "data")) == 24
    assert "Traceback" not in outcome.output


def catalog_exported(outcome: Outcome) -> None:
    rows = csv_rows(outcome.cwd / "data" / "catalog.csv")
    assert len(rows) == len(catalog(outcome.cwd / "data")) > 24, len(rows)


def restored(outcome: Outcome) -> None:
    """Check: the image the review deleted is back, in the folder and the catalog."""
    deleted = outcome.session_values["<deleted>"]
    assert deleted in outcome.output.split(), outcome.output
    assert (outcome.cwd / "data" / "insects" / deleted).is_file()
    assert ants(outcome) == 12


def http(method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def delete_worst(base: str, first_page: bytes) -> dict[str, Any]:
    """On the review app, as a person clicks: mark the worst ant delete, then apply."""
    worst = json.loads(first_page)["images"][0]
    # The page's own requests carry its origin and the session token written into the page.
    with urllib.request.urlopen(f"{base}/", timeout=30) as response:
        page = response.read().decode()
    token = re.search(r'name="review-token" content="([^"]+)"', page).group(1)
    own = {"Origin": base.rstrip("/"), "X-Review-Token": token}
    http("PUT", f"{base}/api/decisions/{worst['id']}", {"action": "delete"}, own)
    http("POST", f"{base}/api/apply", None, own)
    return {"deleted": worst["path"]}


def ants(outcome: Outcome) -> int:
    return sum(row["label"] == "ants" for row in stored(outcome.cwd / "data" / "insects"))


def review_page(outcome: Outcome) -> dict[str, str]:
    """Check: the ants page listed the 12 stored ants, scored, highest loss first; the one
    deleted is gone from the folder and the catalog."""
    answer = json.loads(outcome.response)
    losses = [image["loss"] for image in answer["images"]]
    assert answer["total"] == 12 and None not in losses and losses == sorted(losses, reverse=True), answer
    assert not (outcome.cwd / "data" / "insects" / outcome.visited["deleted"]).exists()
    assert ants(outcome) == 11
    return {"<deleted>": outcome.visited["deleted"]}


def serving(outcome: Outcome) -> None:
    """Check: the web app serves the exported model (its ``/info``)."""
    info = json.loads(outcome.response)
    assert info["classes"] == ["ants", "bees"] and info["model"] == "resnet18", info


def dry_run(recipe: str) -> Callable[[Outcome], None]:
    def check(outcome: Outcome) -> None:
        assert recipe in outcome.output, outcome.output

    return check


COMPOSE = """
import sys
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
CONF = sys.argv.pop(1)
overrides = [a for a in sys.argv[1:] if a not in ("-m", "--multirun")]
with initialize_config_dir(config_dir=CONF, version_base="1.3"):
    cfg = compose("train", overrides=overrides, return_hydra_config=True)
launcher = cfg.hydra.launcher
get_class(launcher._target_)  # the submitit plugin is installed
print(launcher._target_, launcher.partition, launcher.gpus_per_node, cfg.trainer.devices, cfg.trainer.strategy)
"""


def slurm_composed(outcome: Outcome) -> None:
    target, partition, gpus, devices, _ = outcome.output.split()[-5:]
    assert target.endswith("SlurmLauncher") and partition == "gpu" and gpus == devices == "4", outcome.output


def no_chromium() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (install it with `make browsers` or set CHROMIUM_PATH)"
    return None


@dataclass(frozen=True)
class Case:
    """How to run the README commands that ``pattern`` finds (``re.search`` on the text as written).

    ``prepare(session, command)`` returns the working directory, ready; ``append(session)`` the
    documented options appended to shrink the command; ``check(outcome)`` asserts what it made
    (after exit status 0) and returns placeholder values for later commands (``{"<run>": ...}``).
    ``mode``: ``run`` (to its end), ``server`` (until it answers a GET of ``probe`` on the
    appended ``--port``, then ``visit(base_url, answer)`` clicks on it), ``compose`` (the
    command's Hydra overrides composed, not launched: a Python script is given the README's
    arguments). ``needs`` / ``provides``: artefacts (``run``, ``export``, ...) one command makes
    for others; ``parallel``: started in the background with the others ready to start.
    """

    pattern: str
    check: Callable[[Outcome], Any]
    prepare: Callable[[Session, Command], Path] = own_workdir
    append: Callable[[Session], list[str]] = lambda session: []
    provides: str | None = None
    needs: tuple[str, ...] = ()
    slow: bool = False
    # Started in the background, with every other parallel case whose needs are made, when the
    # first of them comes up; for the independent crawls and the commands after training.
    parallel: bool = False
    mode: str = "run"
    probe: str = "/"
    visit: Callable[[str, bytes], dict[str, Any]] | None = None  # a server case's clicks after its probe
    skip: Callable[[], str | None] = lambda: None
    # Absolute example paths of the README (``/models/...``) -> where the test put those files.
    rewrite: Callable[[Path], dict[str, str]] = lambda chain: {}


def gallery(session: Session, *more: str) -> list[str]:
    return ["-a", f"start_urls={session.demo.results_url('circle')}", "-a", "max_images=5", *more]


def search(setting: str, path: str) -> Callable[[Session], list[str]]:
    return lambda session: ["-a", "max_images=5", "-s", f"{setting}={session.search.base}{path}"]


FAST_TRAIN = ["data.image_size=32", "trainer.max_epochs=1"]
# fast_dev_run (one batch per stage); 64 px, as AlexNet's pooling needs more than 32 px.
FDR_SWEEP = ["debug=fdr", "data.image_size=64"]
FDR_TRAIN = ["debug=fdr", "data.image_size=32"]

CASES: list[Case] = [
    # Quick start. `make demo` trains for minutes (~15 on a 2-core CPU) and cannot be shrunk from
    # its command line, and `make test` would run this very suite: both are dry runs (`-n`:
    # make prints the recipe it would run). tests/test_end_to_end.py runs `python -m demo`, shrunk.
    Case(r"^make demo$", dry_run("-m demo"), in_repo, lambda s: ["-n"]),
    Case(r"^make test$", dry_run("-m pytest"), in_repo, lambda s: ["-n"]),
    # 1. Crawl one category per run (the spider table).
    # From category names to compared models: its own options before its `--`, the trainer's after.
    Case(r"-m imageclf wikimedia ", one_command_job(("ants", "bees"), 5),
         append=lambda s: ["--max-images", "5", "-s", f"WIKIMEDIA_API_URL={s.search.base}/wikimedia/api.php",
                           "-s", "AUTOTHROTTLE_ENABLED=0", "--", *FDR_TRAIN]),
    Case(r"-m imageclf gallery ", one_command_job(("ants", "bees"), 6),
         append=lambda s: ["-a", f"start_urls={s.labelled_site.url}/search/{{label}}", "--max-images", "6",
                           "-s", "AUTOTHROTTLE_ENABLED=0", "--", *FDR_TRAIN], slow=True),
    Case(r"^scrapy crawl gallery (?!.*render=1)", crawled("gallery", 5, "ants"), append=gallery, parallel=True),
    Case(r"^scrapy crawl gallery .*render=1", crawled("gallery", 5), parallel=True, skip=no_chromium,
         append=lambda s: gallery(s, "-a", "max_scrolls=2", "-a", "scroll_timeout=30")),
    Case(r"^scrapy crawl urls ", crawled("urls", 3), with_urls_file, parallel=True),
    Case(r"^scrapy crawl wikimedia ", crawled("wikimedia", 5, "formica ant", licence=True), parallel=True,
         append=search("WIKIMEDIA_API_URL", "/wikimedia/api.php")),
    Case(r"^scrapy crawl openverse ", crawled("openverse", 5, "ants", licence=True), parallel=True,
         append=search("OPENVERSE_API_URL", "/openverse")),
    Case(r"^scrapy crawl bing ", crawled("bing", 5, "ant insect"), parallel=True,
         append=search("BING_BASE_URL", "/bing")),
    Case(r"^scrapy crawl duckduckgo ", crawled("duckduckgo", 5, "ants"), parallel=True,
         append=search("DUCKDUCKGO_BASE_URL", "/duckduckgo")),
    # Check and export.
    Case(r"-m crawler\.dataset summary data --contact-sheet sheet\.png$", summarised, with_dataset),
    Case(r"-m crawler\.dataset check data$", dataset_checked, with_dataset),
    Case(r"-m crawler\.dataset check data --repair$", dataset_checked, with_dataset),
    Case(r"-m crawler\.dataset export data$", catalog_exported, with_dataset),
    Case(r"-m crawler\.dataset rehash data$", dataset_checked, with_dataset),
    # 2. Train one model, or sweep several. Sweeps: fast_dev_run, slow (4-6 models).
    Case(r"-m trainer experiment=resnet18 data\.root=data/insects$", one_run, in_chain,
         lambda s: FAST_TRAIN, provides="run"),
    Case(r"-m trainer -m experiment=baseline_cnn,alexnet,vgg16,resnet18 data\.root=data/insects ",
         comparison(4), in_chain, lambda s: FDR_SWEEP, provides="sweep", slow=True),
    Case(r"-m trainer experiment=compare data\.root=data/insects$", comparison(6), in_chain,
         lambda s: FDR_SWEEP, slow=True),
    Case(r"-m trainer\.compare runs/multirun/<sweep>$", comparison_rebuilt,
         in_chain_without("runs/multirun/<sweep>/comparison.md", "runs/multirun/<sweep>/comparison.csv"),
         needs=("sweep",), slow=True),
    Case(r"-m trainer\.compare runs$", compared_all, in_chain, needs=("run",)),
    # The SLURM sweep would submit jobs to a cluster: its overrides are composed (the launcher
    # plugin imported, the partition and GPUs read back), not launched. Hydra refuses `--cfg`
    # together with `-m`, so a script given the command's own arguments composes them.
    Case(r"-m trainer -m .*hydra/launcher=slurm", slurm_composed, mode="compose"),
    Case(r"-m trainer experiment=compare data\.root=\.\./shared/data/hymenoptera_data ", comparison(6),
         hymenoptera_layout, lambda s: FDR_SWEEP, slow=True),
    # 3. Look at the model, clean the data with it, export and serve it.
    Case(r"-m trainer\.diagnostics runs/<run>$", diagnosed, in_chain_without("runs/<run>/diagnostics"),
         needs=("run",), parallel=True),
    Case(r"-m trainer\.export runs/<run> exports/insects$", exported, in_chain, needs=("run",), provides="export",
         parallel=True),
    Case(r"-m trainer\.predict exports/insects photo\.jpg photos/ ", predicted_photos, in_chain_with_photos,
         needs=("export",), parallel=True),
    Case(r"-m trainer\.predict exports/insects data/insects --out scores\.csv$", scored_dataset, in_chain,
         needs=("export",), provides="scores", parallel=True),
    Case(r"-m crawler\.review data/insects --scores scores\.csv --port \d+$", review_page, in_chain,
         lambda s: ["--port", str(s.server_port)], needs=("scores",), mode="server",
         probe="/api/images?label=ants&page=1", visit=delete_worst, provides="review"),
    Case(r"-m crawler\.review restore data/insects$", restored, in_chain, needs=("review",)),
    # Transfer from local weights files: state dicts saved here stand in for torchvision's downloads.
    Case(r"-m trainer experiment=(vgg16_transfer|alexnet_transfer|resnet50_finetune) data\.root=data/insects "
         r"model\.net\.weights=/models/\S+\.pth$", transferred, transfer_weights,
         lambda s: ["debug=fdr", "data.image_size=64"], slow=True,
         rewrite=lambda chain: {"/models/": f"{chain}/models/"}),
    # Label issues out of sample: 2 folds of one epoch; the GPU preset runs on the CPU preset here.
    Case(r"-m trainer\.label_issues data\.root=data/insects$", label_issues_found("baseline_cnn"), in_chain,
         lambda s: ["folds=2", *FAST_TRAIN], provides="label_issues"),
    Case(r"-m trainer\.label_issues data\.root=data/insects experiment=resnet18 folds=3 trainer=gpu$",
         label_issues_found("resnet18"), in_chain, lambda s: ["trainer=cpu", *FAST_TRAIN], slow=True),
    Case(r"-m crawler\.review data/insects --scores runs/<date>_<time>_label_issues_baseline_cnn/label_issues\.csv$",
         label_issues_reviewed, in_chain, lambda s: ["--port", str(s.server_port)], needs=("label_issues",),
         mode="server", probe="/api/images?label=ants&page=1"),
    Case(r"-m trainer\.serve exports/insects --port \d+$", serving, in_chain,
         lambda s: ["--port", str(s.server_port)], needs=("export",), mode="server", probe="/info"),
]




# -- the tests ---------------------------------------------------------------------------------


def params() -> list[Any]:
    """One test per README command, slow-marked as its case says (unmatched ones fail)."""
    out = []
    for command in readme_commands(README.read_text(encoding="utf-8")):
        slow = any(case.slow for case in CASES if re.search(case.pattern, command.text))
        out.append(pytest.param(command, id=command.slug, marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    running = Session(tmp_path_factory.mktemp("readme"))
    yield running
    running.close()


def test_readme_has_commands() -> None:
    """The reader finds the README's commands (a broken parser would make every test vacuous)."""
    commands = readme_commands(README.read_text(encoding="utf-8"))
    texts = [c.text for c in commands]
    assert len(commands) >= 20, texts
    assert any(t.startswith("scrapy crawl gallery") for t in texts)
    assert any(t.startswith(".venv/bin/python -m trainer -m ") for t in texts)
    # continuation lines are joined and comments dropped
    assert not any("\\" in t or "#" in t for t in texts), texts


def test_reader_on_a_sample() -> None:
    sample = """# x
```sh
make demo    # a comment
.venv/bin/python -m trainer -m a=1 \\
    b=2   # more
```
```
crawler/    not a command
```
## Usage
Run `scrapy crawl x -a q="a b"`, not `scrapy` or `-s X=1`.
## Performance
`.venv/bin/python -m benchmarks.x`
"""
    got = [(c.text, c.line) for c in readme_commands(sample)]
    assert got == [("make demo", 3), (".venv/bin/python -m trainer -m a=1 b=2", 4), ('scrapy crawl x -a q="a b"', 11)]


@pytest.mark.parametrize("command", params())
def test_readme_command(command: Command, session: Session, request: pytest.FixtureRequest) -> None:
    """The command, as written plus its case's appended options, exits 0 and makes what it says."""
    case = session.case(command)
    session.start_dataset()  # in the background: the dataset commands and the trainer's need it
    if case.parallel:
        # Start every selected parallel case whose inputs are made, this one included; each
        # test then waits for its own command.
        for item in request.session.items:
            other = getattr(item, "callspec", None) and item.callspec.params.get("command")
            if isinstance(other, Command) and len(cases := matching(other)) == 1:
                if cases[0].parallel and all(session.made(need) for need in cases[0].needs):
                    session.launch(other)
    session.outcome(command)
