"""ANN shortlists vs exact 1:N search on galleries derived from real embeddings.

Not a test: prints one Markdown table and writes ``bench/ann_results.json``. For each size:

- **gallery**: rows drawn from a Gaussian model of real face embeddings. The default model
  embeds the LFW photos in ``../shared/lfw-dev`` and ``../shared/lfw-train`` (cached under
  ``.cache/bench/``); the identities' means give the between-person covariance, each photo's
  offset from its person's mean the within-person covariance (both shrunk towards a scaled
  identity, since a few thousand photos do not fill 256 dimensions). A synthetic person is a
  centre drawn from the first, each of their rows (2 per person) the centre plus a draw from
  the second, normalised: the gallery has the real embeddings' anisotropy and their
  genuine/impostor similarity gap (both printed in the notes next to LFW's own).
- **queries**: genuine (a fresh row of a person in the gallery) and impostor (a person who
  is not), 200 of each.
- **exact**: the truth is computed in blocks over the same float16 matrix (every row); the
  latency baseline is :class:`~facegate.gallery.index.GalleryIndex`'s exact search.
- **ANN**: the same index with an :class:`~facegate.gallery.ann.AnnIndex`: faiss shortlist,
  exact rescoring. recall@1: the top subject is the exact one; recall@5: the share of the
  exact top-5 subjects found.

Run: ``.venv/bin/python bench/ann_bench.py [--sizes 1000000,10000000]`` from the repository
root (10M rows: about 8 GB of memory and several minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CACHE = REPO / ".cache" / "bench"
ROWS_PER_PERSON = 2
QUERIES = 200
K = 5
BLOCK = 1 << 16
SHRINK = 0.1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def real_embeddings() -> tuple[np.ndarray, np.ndarray, float]:
    """LFW photos embedded with the default model: ``(N, D)`` rows, person labels, and the
    model's decision threshold."""
    from facegate.pipeline.face_pipeline import FacePipeline

    pipeline = FacePipeline()
    cached = CACHE / f"lfw-{pipeline.model_id}-{pipeline.embedder.card.weights_sha256[:12]}.npz"
    if cached.exists():
        found = np.load(cached)
        return found["emb"], found["person"], pipeline.threshold
    paths = sorted(SHARED.glob("lfw-dev/**/*.jpg")) + sorted(SHARED.glob("lfw-train/**/*.jpg"))
    log(f"embedding {len(paths)} LFW photos once (cached in {cached})")
    rows, people = [], []
    for start in range(0, len(paths), 32):
        batch = paths[start : start + 32]
        for path, outcome in zip(
            batch, pipeline.process_many([p.read_bytes() for p in batch]), strict=True
        ):
            if hasattr(outcome, "embeddings") and outcome.embeddings:
                rows.append(outcome.primary.vector)
                people.append(path.parent.name)
    emb = np.asarray(rows, dtype=np.float32)
    person = np.asarray(people)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cached, emb=emb, person=person)
    return emb, person, pipeline.threshold


def _shrunk_factor(deviations: np.ndarray) -> np.ndarray:
    """A Cholesky factor of the deviations' covariance, shrunk towards a scaled identity."""
    cov = deviations.T @ deviations / max(1, len(deviations) - 1)
    d = cov.shape[0]
    cov = (1 - SHRINK) * cov + SHRINK * (np.trace(cov) / d) * np.eye(d)
    return np.linalg.cholesky(cov).astype(np.float32)


class Generator:
    """Synthetic people and their rows, from the real embeddings' two covariances."""

    def __init__(self, emb: np.ndarray, person: np.ndarray) -> None:
        names, inverse = np.unique(person, return_inverse=True)
        means = np.zeros((len(names), emb.shape[1]))
        np.add.at(means, inverse, emb)
        counts = np.bincount(inverse)
        means /= counts[:, None]
        multi = counts[inverse] >= 2
        self.within = _shrunk_factor(emb[multi] - means[inverse[multi]])
        self.mean = means.mean(axis=0).astype(np.float32)
        self.between = _shrunk_factor(means - self.mean)
        self.dim = emb.shape[1]
        self.real_gap = _real_gap(emb, inverse)
        self._match_genuine(self.real_gap[0])

    def _match_genuine(self, target: float) -> None:
        """Scale the within-person spread until two rows of one person have LFW's mean
        genuine cosine (the shrunk covariance alone makes them too alike)."""
        centres = self.centres(2000, seed=99)
        base = self.within.copy()
        lo, hi = 0.5, 4.0
        for _ in range(20):
            mid = (lo + hi) / 2
            self.within = base * mid
            a, b = self.rows(centres, seed=97), self.rows(centres, seed=98)
            if float(np.mean(np.einsum("ij,ij->i", a, b))) > target:
                lo = mid
            else:
                hi = mid
        self.within = base * (lo + hi) / 2

    def centres(self, count: int, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal((count, self.dim), dtype=np.float32)
        return self.mean + z @ self.between.T

    def rows(self, centres: np.ndarray, seed: int) -> np.ndarray:
        z = np.random.default_rng(seed).standard_normal(centres.shape, dtype=np.float32)
        x = centres + z @ self.within.T
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _real_gap(emb: np.ndarray, inverse: np.ndarray) -> tuple[float, float]:
    """Mean cosine of LFW's genuine pairs (same person) and of 20,000 impostor pairs."""
    genuine = [
        float(emb[i] @ emb[j])
        for p in np.flatnonzero(np.bincount(inverse) >= 2)
        for i, j in [tuple(np.flatnonzero(inverse == p)[:2])]
    ]
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(emb), 20_000), rng.integers(0, len(emb), 20_000)
    keep = inverse[a] != inverse[b]
    impostor = np.einsum("ij,ij->i", emb[a[keep]], emb[b[keep]])
    return float(np.mean(genuine)), float(np.mean(impostor))


def build_gallery(gen: Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, D) float16`` rows and the centres of the ``n / 2`` people, block by block."""
    people = -(-n // ROWS_PER_PERSON)
    centres = np.empty((people, gen.dim), dtype=np.float32)
    matrix = np.empty((n, gen.dim), dtype=np.float16)
    for start in range(0, people, BLOCK):
        stop = min(people, start + BLOCK)
        centres[start:stop] = gen.centres(stop - start, seed=start + 1)
        owner = np.repeat(np.arange(start, stop), ROWS_PER_PERSON)
        lo, hi = start * ROWS_PER_PERSON, min(n, stop * ROWS_PER_PERSON)
        matrix[lo:hi] = gen.rows(centres[owner[: hi - lo]], seed=10**9 + start)
    return matrix, centres


def exact_truth(matrix: np.ndarray, queries: np.ndarray, rows: int = 64) -> np.ndarray:
    """Each query's best ``rows`` row numbers by exact float32 similarity (blocked)."""
    best_s = np.full((len(queries), rows), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), rows), dtype=np.int64)
    for start in range(0, len(matrix), 1 << 18):
        block = matrix[start : start + (1 << 18)].astype(np.float32)
        scores = queries @ block.T
        take = min(rows, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + start], axis=1)
        order = np.argsort(-cand_s, axis=1, kind="stable")[:, :rows]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i


def top_subjects(rows: np.ndarray, k: int = K) -> list[int]:
    seen: list[int] = []
    for row in rows:
        person = int(row) // ROWS_PER_PERSON
        if person not in seen:
            seen.append(person)
        if len(seen) == k:
            break
    return seen


def _ms(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q) * 1e3)


def bench_size(
    gen: Generator, n: int, exact_queries: int, threshold: float
) -> list[dict[str, object]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    from facegate.gallery.ann import AnnIndex, AnnParams
    from facegate.gallery.index import GalleryIndex

    started = time.perf_counter()
    matrix, centres = build_gallery(gen, n)
    log(f"{n:,} rows generated in {time.perf_counter() - started:.0f} s")
    subjects = pc.cast(pa.array(np.arange(n) // ROWS_PER_PERSON), pa.string())
    index = GalleryIndex(matrix, subjects, threshold=threshold, dtype=np.float16)
    del matrix
    rng = np.random.default_rng(7)
    owners = rng.integers(0, len(centres), QUERIES)
    genuine = gen.rows(centres[owners], seed=11)
    impostor = gen.rows(gen.centres(QUERIES, seed=12), seed=13)
    genuine_cos = float(
        np.mean(np.einsum("ij,ij->i", genuine, index.embeddings[owners * 2].astype(np.float32)))
    )
    params = AnnParams.for_rows(n, gen.dim)
    started = time.perf_counter()
    blocks = [index.embeddings[s : s + BLOCK] for s in range(0, n, BLOCK)]
    ann = AnnIndex.build(blocks, n, gen.dim, params)
    build_s = time.perf_counter() - started
    log(f"{params.factory} built in {build_s:.0f} s ({ann.nbytes / 2**20:.0f} MiB)")
    served = index.with_ann(ann)
    rows = []
    for kind, queries in (("genuine", genuine), ("impostor", impostor)):
        truth = exact_truth(index.embeddings, queries)
        at1, at5, agree, ann_s, exact_s = [], [], [], [], []
        for i, q in enumerate(queries):
            t = time.perf_counter()
            found = served.search(q, K)
            ann_s.append(time.perf_counter() - t)
            got = [int(m.subject_id) for m in found.candidates]
            want = top_subjects(truth[i])
            at1.append(got[:1] == want[:1])
            at5.append(len(set(got) & set(want)) / len(want))
            best = found.best  # the decision: a match at the model's threshold, and whom
            exact_best = (
                int(want[0])
                if float(queries[i] @ index.embeddings[truth[i][0]].astype(np.float32)) >= threshold
                else None
            )
            agree.append((None if best is None else int(best.subject_id)) == exact_best)
            if i < exact_queries:
                t = time.perf_counter()
                index.search(q, K)
                exact_s.append(time.perf_counter() - t)
        p50, exact_p50 = _ms(ann_s, 0.5), _ms(exact_s, 0.5)
        rows.append(
            {
                "section": "search",
                "measure": f"1:N top-5 ANN, {n:,} rows float16, {kind} probes",
                "unit": "ms",
                "value": p50,
                "baseline": exact_p50,
                "baseline_name": "exact GalleryIndex f16, same gallery",
                "ratio": p50 / exact_p50,
                "higher_is_better": False,
                "recall_at_1": float(np.mean(at1)),
                "recall_at_5": float(np.mean(at5)),
                "decision_agreement": float(np.mean(agree)),
                "p95_ms": _ms(ann_s, 0.95),
                "build_s": build_s,
                "ann_mib": ann.nbytes / 2**20,
                "matrix_mib": index.matrix_nbytes / 2**20,
                "notes": (
                    f"{params.factory} nprobe {params.nprobe} shortlist {params.shortlist}; "
                    f"recall@1 {np.mean(at1):.3f}, @5 {np.mean(at5):.3f}; same decision at "
                    f"threshold {threshold:.3f}: {np.mean(agree):.3f}; p95 "
                    f"{_ms(ann_s, 0.95):.1f} ms; build {build_s:.0f} s; index "
                    f"{ann.nbytes / 2**20:,.0f} MiB beside a {index.matrix_nbytes / 2**20:,.0f}"
                    f" MiB matrix; exact p50 over {len(exact_s)} queries; derived genuine cos "
                    f"{genuine_cos:.2f} (LFW {gen.real_gap[0]:.2f}), LFW impostor "
                    f"{gen.real_gap[1]:.2f}"
                ),
            }
        )
        log(rows[-1]["notes"])
    return rows


def measure(sizes: list[int], exact_queries: int = 20) -> list[dict[str, object]]:
    emb, person, threshold = real_embeddings()
    gen = Generator(emb, person)
    out: list[dict[str, object]] = []
    for n in sizes:
        out.extend(bench_size(gen, n, exact_queries, threshold))
    return out


def sweep(n: int) -> None:
    """Impostor recall@1 and p50 against the lists probed and the shortlist, one index of
    ``n`` rows: what the default's 1/8 of the lists gives up on probes of people not in the
    gallery (their nearest look-alike is in any list), and what probing more costs."""
    from dataclasses import replace

    import pyarrow as pa
    import pyarrow.compute as pc

    from facegate.gallery.ann import AnnIndex, AnnParams
    from facegate.gallery.index import GalleryIndex

    emb, person, threshold = real_embeddings()
    gen = Generator(emb, person)
    matrix, _ = build_gallery(gen, n)
    subjects = pc.cast(pa.array(np.arange(n) // ROWS_PER_PERSON), pa.string())
    index = GalleryIndex(matrix, subjects, threshold=threshold, dtype=np.float16)
    del matrix
    impostor = gen.rows(gen.centres(QUERIES, seed=12), seed=13)
    truth = exact_truth(index.embeddings, impostor)
    params = AnnParams.for_rows(n, gen.dim)
    blocks = [index.embeddings[s : s + BLOCK] for s in range(0, n, BLOCK)]
    built = AnnIndex.build(blocks, n, gen.dim, params)
    print(f"{n:,} rows, {params.factory}, impostor probes")
    print("| lists probed | shortlist | recall@1 | p50 ms |")
    print("|---|---|---|---|")
    for share in (8, 4, 2):
        for shortlist in (1024, 4096):
            tuned = replace(params, nprobe=params.nlist // share, shortlist=shortlist)
            served = index.with_ann(AnnIndex(built._index, tuned))
            hits, seconds = [], []
            for i, q in enumerate(impostor):
                started = time.perf_counter()
                found = served.search(q, K)
                seconds.append(time.perf_counter() - started)
                hits.append(int(found.candidates[0].subject_id) == top_subjects(truth[i])[0])
            print(
                f"| 1/{share} ({tuned.nprobe}) | {shortlist} | {np.mean(hits):.3f} | "
                f"{_ms(seconds, 0.5):.2f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--exact-queries", type=int, default=20)
    parser.add_argument("--sweep", type=int, metavar="ROWS", help="impostor recall vs nprobe")
    args = parser.parse_args()
    if args.sweep:
        sweep(args.sweep)
        return
    rows = measure([int(s) for s in args.sizes.split(",")], args.exact_queries)
    (REPO / "bench" / "ann_results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| measure | p50 ms | exact p50 ms | recall@1 | recall@5 | same decision | p95 ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['measure']} | {r['value']:.1f} | {r['baseline']:.0f} | "
            f"{r['recall_at_1']:.3f} | {r['recall_at_5']:.3f} | {r['decision_agreement']:.3f} | "
            f"{r['p95_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
