"""Byte-identity check for per-user recommendations: dump every answer as JSON, compare two dumps.

Run the same command against two trees of ``taar`` (before and after a change)
and compare the outputs. Run from outside the worktree (``python -m`` puts the
current directory first on ``sys.path``, which would shadow the older ``taar``)::

    git archive <base> taar | tar -x -C /tmp/base
    cd /tmp
    PYTHONPATH=/tmp/base:$TREE python -m bench.recommend_identity --out /tmp/before.jsonl
    PYTHONPATH=$TREE python -m bench.recommend_identity --out /tmp/after.jsonl
    PYTHONPATH=$TREE python -m bench.recommend_identity --compare /tmp/before.jsonl /tmp/after.jsonl

Only ``taar`` comes from the first path; the models (``bench.recommenders.synthetic_models``)
and profiles (``bench.serve.synthetic_profiles``) are built by this tree, so both runs
see the same inputs. Each line is one answer: the seeded ``RecommendationManager.recommend``
result (GUIDs, weights, per-GUID contributions, seed) for randomised and top-N managers and
several limits, pools and request locales, plus the ensemble's ``recommend_explained`` and every
member's ``recommend``. Floats are written with ``repr`` (round-trips exactly), so equal lines
mean bit-identical weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

from bench.recommenders import synthetic_models
from bench.serve import synthetic_profiles
from taar.profile import decode_payload, normalise_profile
from taar.recommenders import RecommendationManager, build_engine

#: Request shapes: (limit, extra) pairs cycled over the profiles.
REQUESTS = [
    (4, {"locale": None, "platform": None}),
    (10, {"locale": "de", "platform": "win"}),
    (1, {"locale": "fr-CA", "platform": None}),
    (0, None),
    (25, {"locale": "xx", "platform": "linux"}),
]


def profiles_for(engine, n: int, models) -> list[dict]:
    """``n`` normalised profiles, some altered to reach the edge cases (no addons, unknown GUIDs...)."""
    rows = synthetic_profiles(n, list(engine.whitelist), sorted(models["locale"])[:20])
    out = []
    for i, (hashed, payload) in enumerate(rows):
        profile = normalise_profile(decode_payload(payload), hashed)
        if i % 7 == 0:  # a GUID outside every model, plus an ALS-only item
            profile["installed_addons"] = profile["installed_addons"] + ["unknown@example.org", "item-00042@bench"]
        if i % 11 == 0:  # no locale in the profile: the request's locale decides
            profile["locale"] = ""
        if i % 13 == 0:  # zero continuous features: the canberra zero-denominator terms
            for field in ("bookmark_count", "tab_open_count", "total_uri"):
                profile[field] = 0.0
        if i % 17 == 0:  # an exact donor-like client: distance 0 on some donors
            profile.update(geo_city="Rome", locale="de", os="Linux")
        out.append(profile)
    return out


def answers(n_profiles: int, n_items: int):
    """Yield one JSON-able answer per call (several calls per profile)."""
    models = synthetic_models(5000, 50, n_items=n_items)
    engine = build_engine(models)
    profiles = profiles_for(engine, n_profiles, models)
    by_id = {p["client_id"]: p for p in profiles}
    fetcher = type("DictFetcher", (), {"get": lambda self, cid: by_id.get(cid)})()
    managers = {
        "random": RecommendationManager(engine, fetcher),
        "topn": RecommendationManager(engine, fetcher, randomize=False),
        "pool50": RecommendationManager(engine, fetcher, candidate_pool=50),
    }
    members = [(name, rec) for name, rec in engine.ensemble.members_]
    for i, profile in enumerate(profiles):
        limit, extra = REQUESTS[i % len(REQUESTS)]
        seed = (i * 2654435761) % (2**63)
        for name, manager in managers.items():
            rec = manager.recommend(profile["client_id"], limit, extra=extra, seed=seed)
            yield {"i": i, "kind": name, "results": rec.results, "sources": rec.sources, "seed": rec.seed,
                   "test": rec.is_test, "unknown": rec.unknown_client}
        results, sources = engine.ensemble.recommend_explained(profile, 20, extra)
        yield {"i": i, "kind": "explained", "results": results, "sources": sources}
        for name, member in members:
            yield {"i": i, "kind": name, "results": member.recommend(profile, 30, extra)}
        similarity = engine.similarity
        if similarity.can_recommend(profile, extra):  # the intermediate arrays, bit for bit
            x_c, c_c = similarity.encode(profile)
            yield {"i": i, "kind": "similarity_arrays",
                   "sha256": hashlib.sha256(similarity.distances(x_c, c_c).tobytes()
                                            + similarity.curve_points(profile).tobytes()
                                            + similarity.scores(profile).tobytes()).hexdigest()}
        if i % 50 == 0:  # unknown and test ids
            for cid in (f"{i:064x}", "a" * 64, "-" * 3 + "1" * 10):
                rec = managers["random"].recommend(cid, 4, seed=seed)
                yield {"i": i, "kind": f"id:{cid}", "results": rec.results, "sources": rec.sources,
                       "seed": rec.seed, "test": rec.is_test, "unknown": rec.unknown_client}


def dump(path: str, n_profiles: int) -> None:
    digest = hashlib.sha256()
    count = recommend_calls = 0
    with open(path, "w") as fh:
        for n_items in (5000, 200):  # the serving sizes, and the small bench model
            for answer in answers(n_profiles, n_items):
                answer["n_items"] = n_items
                line = json.dumps(answer) + "\n"  # key order kept: it is part of the answer
                fh.write(line)
                digest.update(line.encode())
                count += 1
                recommend_calls += answer["kind"] in ("random", "topn", "pool50") or answer["kind"][:3] == "id:"
    print(json.dumps({"answers": count, "manager_recommend_calls": recommend_calls,
                      "sha256": digest.hexdigest(), "out": path}))


def compare(before: str, after: str) -> int:
    with open(before) as a, open(after) as b:
        left, right = a.readlines(), b.readlines()
    differing = [i for i, (x, y) in enumerate(zip(left, right, strict=False)) if x != y]
    print(json.dumps({"before": len(left), "after": len(right), "differing_lines": len(differing),
                      "first_differing": differing[:5]}))
    return 0 if len(left) == len(right) and not differing else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    parser.add_argument("--profiles", type=int, default=1000)
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("--out or --compare is required")
    dump(args.out, args.profiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
