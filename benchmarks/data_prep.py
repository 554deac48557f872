r"""Data-preparation benchmark: throughput and peak memory of build_knowledge_corpus and
build_pretrain_corpus on synthetic corpora of two sizes (default 20k and 100k documents).

  python benchmarks/data_prep.py [--sizes=20000,100000] [--num_workers=2]

Each (size, stage) runs in a fresh subprocess so that peak RSS (getrusage ru_maxrss, main process
plus the worker processes as RUSAGE_CHILDREN) belongs to that run alone. Prints one JSON object per
line: {"stage", "docs", "blocks"|"records", "seconds", "docs_per_s", "peak_rss_mb_main",
"peak_rss_mb_workers"}. Bounded memory shows as peak RSS that does not grow with the corpus size.
The corpus is generated on the fly (seeded), written as JSONL to a temp dir, and deleted afterwards.
"""
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

_WORDS = ("the a of in on at to is was and by for with from as his her its city river king queen "
          "built wrote founded capital book war year church school army people large small north "
          "south old new first second museum bridge music film team game river island mountain "
          "village famous known called later during after before under between").split()
_NAMES = ("Paris London Berlin Vienna Rome Madrid Oslo Mary John Albert Marie Charles Anna Peter "
          "Thomas Elizabeth Smith Curie Newton Darwin Lisbon Prague Dublin Cairo").split()
_MONTHS = "January March May June July October December".split()


def _sentence(rng):
  words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 22))]
  words[rng.randrange(len(words))] = rng.choice(_NAMES) + " " + rng.choice(_NAMES)
  if rng.random() < 0.6:
    words.insert(rng.randrange(len(words)), "in %s %d" % (rng.choice(_MONTHS), rng.randint(1000, 2020)))
  s = " ".join(words)
  return s[0].upper() + s[1:] + "."


def write_corpus(path, num_docs, seed=0):
  rng = random.Random(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(num_docs):
      body = " ".join(_sentence(rng) for _ in range(rng.randint(3, 12)))
      f.write(json.dumps({"title": "%s %d" % (rng.choice(_NAMES), i), "body": body}) + "\n")


def write_vocab(path):
  special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","]
  words = sorted({w.lower() for w in _WORDS + _NAMES + _MONTHS})
  chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
  tokens = list(dict.fromkeys(special + words + chars + ["##" + c for c in chars]))  # no duplicates
  with open(path, "w") as f:
    f.write("\n".join(tokens) + "\n")


def _child(stage, work, num_docs, num_workers):
  # This file is named data_prep.py: drop its directory from sys.path (spawned workers inherit
  # it) so `data_prep` resolves to the package, not to this script.
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
  sys.path.insert(0, os.path.dirname(here))
  import realm_tf2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from data_prep import build_knowledge_corpus, build_pretrain_corpus  # pylint: disable=g-import-not-at-top
  inp = os.path.join(work, "corpus.jsonl")
  start = time.time()
  if stage == "build_knowledge_corpus":
    c = build_knowledge_corpus.build_knowledge_corpus(
        inp, os.path.join(work, "vocab.txt"), os.path.join(work, "k"), num_shards=8,
        num_workers=num_workers, chunk_size=256, verbose=False)
    out_key = "blocks"
  else:
    c = build_pretrain_corpus.build_pretrain_corpus(
        inp, os.path.join(work, "p"), num_shards=8, knowledge_corpus_dir=os.path.join(work, "k"),
        num_workers=num_workers, chunk_size=256, verbose=False)
    out_key = "records"
  secs = time.time() - start
  kb = 1024.0  # ru_maxrss is in KiB on Linux
  print(json.dumps({
      "stage": stage, "docs": num_docs, out_key: c.written, "skipped": c.num_skipped,
      "num_workers": num_workers, "seconds": round(secs, 1),
      "docs_per_s": round(num_docs / secs, 1),
      "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kb, 1),
      "peak_rss_mb_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kb, 1),
  }), flush=True)


def main():
  args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if "=" in a)
  if "child" in args:
    _child(args["child"], args["work"], int(args["docs"]), int(args["num_workers"]))
    return
  sizes = [int(s) for s in args.get("sizes", "20000,100000").split(",")]
  num_workers = int(args.get("num_workers", os.cpu_count() or 1))
  for n in sizes:
    work = tempfile.mkdtemp(prefix="dataprep_bench_")
    try:
      write_corpus(os.path.join(work, "corpus.jsonl"), n)
      write_vocab(os.path.join(work, "vocab.txt"))
      for stage in ("build_knowledge_corpus", "build_pretrain_corpus"):
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--child={stage}",
                        f"--work={work}", f"--docs={n}", f"--num_workers={num_workers}"],
                       check=True, stderr=subprocess.DEVNULL)
    finally:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
