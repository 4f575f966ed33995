"""The synthetic add-on catalogue and the latent structure clients are drawn from (SPEC §7.5).

:func:`build_catalogue` turns the generator parameters and one random stream into
a :class:`Catalogue`: every add-on with its AMO facts (GUID, names, creation
time, rating, versions, listed or not, webextension or legacy, promoted
category), the curated "Recommended" list, and the planted structure that the
client chunks sample from:

* a global Zipf(1.1) popularity over installable add-ons;
* one sparse preference per interest cluster over its own, disjoint add-on subset;
* a few locale-specific add-ons per locale (dictionaries included);
* a locale-dependent mixture over clusters, and per-cluster feature profiles
  (city, OS and log-normal usage means).

Everything is plain numpy arrays and lists so the catalogue pickles cheaply to
worker processes. :func:`amo_documents` renders the neutral ``catalogue.json`` and
``editorial.json`` that :mod:`taar_dev.fake_amo` serves in AMO v4 and v5 shapes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from taar.eligibility import EXCLUDED, is_eligible

DAY_S = 86400
#: The add-on the jobs always exclude (SPEC §7.4); the generator plants it to check they do.
EXCLUDED_GUID = min(EXCLUDED)
SYSTEM_GUIDS = (
    "formautofill@mozilla.org",
    "pictureinpicture@mozilla.org",
    "screenshots@mozilla.org",
    "webcompat-reporter@mozilla.org",
    "webcompat@mozilla.org",
)

# (locale, share, cities): about 20 locales with skewed shares (normalised below).
LOCALES = (
    ("en-US", 0.36, ("New York", "Los Angeles", "Chicago", "Houston", "Seattle", "Boston", "Atlanta", "Denver")),
    ("de", 0.10, ("Berlin", "Hamburg", "Munich", "Cologne", "Frankfurt am Main", "Stuttgart")),
    ("fr", 0.07, ("Paris", "Lyon", "Marseille", "Toulouse", "Lille")),
    ("es-ES", 0.05, ("Madrid", "Barcelona", "Valencia", "Seville")),
    ("en-GB", 0.05, ("London", "Manchester", "Birmingham", "Leeds", "Glasgow")),
    ("ru", 0.05, ("Moscow", "Saint Petersburg", "Novosibirsk", "Yekaterinburg")),
    ("pl", 0.04, ("Warsaw", "Kraków", "Wrocław", "Poznań")),
    ("pt-BR", 0.04, ("São Paulo", "Rio de Janeiro", "Brasília", "Belo Horizonte")),
    ("it", 0.03, ("Rome", "Milan", "Naples", "Turin")),
    ("ja", 0.03, ("Tokyo", "Osaka", "Yokohama", "Nagoya")),
    ("zh-CN", 0.025, ("Beijing", "Shanghai", "Guangzhou", "Shenzhen")),
    ("es-MX", 0.02, ("Mexico City", "Guadalajara", "Monterrey")),
    ("nl", 0.02, ("Amsterdam", "Rotterdam", "Utrecht")),
    ("en-CA", 0.02, ("Toronto", "Vancouver", "Montreal")),
    ("id", 0.015, ("Jakarta", "Surabaya", "Bandung")),
    ("tr", 0.015, ("Istanbul", "Ankara", "Izmir")),
    ("sv-SE", 0.01, ("Stockholm", "Gothenburg", "Malmö")),
    ("cs", 0.01, ("Prague", "Brno")),
    ("uk", 0.01, ("Kyiv", "Kharkiv", "Lviv")),
    ("hu", 0.01, ("Budapest", "Debrecen")),
)
MAX_CITIES = max(len(c) for _, _, c in LOCALES)
OSES = ("Windows_NT", "Darwin", "Linux")
# Per-cluster feature means: subsession hours/day, bookmarks, tabs/day, URIs/day, domains/day.
FEATURE_BASE = np.array([2.0, 40.0, 15.0, 120.0, 12.0])

_ADJ = (
    "Dark Smart Quick Simple Private Tiny Super Easy Clean Silent Bright Happy Swift Secure Calm Bold Clever "
    "Lazy Magic Native Open Pure Rapid Sharp Social Solid Sweet True Vivid Wise Zen Cozy Fancy Lucky Noble"
).split()
_NOUN = (
    "Reader Blocker Tabs Notes Translator Grabber Keeper Saver Switcher Helper Manager Viewer Finder Picker "
    "Shield Cleaner Mode Search Video Sidebar Cookies Passwords Screenshot Theme Zoom Proxy Player Weather "
    "Mail Bookmarks History Downloader Timer Clipboard Dictionary Scroller Highlighter Session Ruler"
).split()
_DOMAINS = ("addons.example.org", "gmail.com", "mozilla.org", "outlook.com", "github.io", "example.com")
_CATEGORIES = ("privacy-security", "tabs", "appearance", "download-management", "search-tools", "social-communication")


@dataclasses.dataclass
class Catalogue:
    """Add-on facts (arrays of length ``n_addons``) plus the latent client model."""

    guids: list
    names: list
    slugs: list
    default_locales: list
    types: list  # "extension" | "dictionary"
    is_system: np.ndarray
    is_webext: np.ndarray
    listed: np.ndarray  # present on AMO
    blocklisted: np.ndarray
    created_s: np.ndarray  # AMO add-on creation, epoch seconds
    rating: np.ndarray
    rating_count: np.ndarray
    promoted: list  # None | "recommended" | "line" | "spotlight"
    version_offsets: np.ndarray  # versions of add-on i: [version_offsets[i], version_offsets[i+1])
    version_strings: list
    version_created_s: np.ndarray  # sorted ascending within each add-on
    curated: list  # indices, editorial order
    installable: np.ndarray  # may appear in telemetry (not system, existed by D)
    popularity: np.ndarray  # global Zipf weight, 0 when not installable
    cluster_of: np.ndarray  # -1 when in no cluster subset
    locale_addons: list  # per locale: indices of its boosted add-ons
    locale_names: list
    locale_shares: np.ndarray
    locale_cities: list
    cluster_given_locale: np.ndarray  # (n_locales, n_clusters)
    combo_p: np.ndarray  # (n_locales * n_clusters, n_addons) float32 install preference, rows sum to 1
    city_weights: np.ndarray  # (n_clusters, MAX_CITIES)
    os_p: np.ndarray  # (n_clusters, len(OSES))
    feature_means: np.ndarray  # (n_clusters, 5)

    @property
    def n_addons(self):
        return len(self.guids)

    @property
    def system_indices(self):
        return np.flatnonzero(self.is_system)

    @property
    def first_create_s(self):
        """Creation time of each add-on's oldest version file (SPEC §8.1 ``first_create_date``)."""
        return self.version_created_s[self.version_offsets[:-1]]

    def eligible_base(self):
        """The §7.4 predicate per add-on, with no client flag set: eligible for some client."""
        return self.eligible(np.arange(self.n_addons, dtype=np.int64), {})

    def eligible(self, addon: np.ndarray, flags: dict, nulls: dict | None = None) -> np.ndarray:
        """:func:`taar.eligibility.is_eligible` of every entry: add-on ``addon[i]`` with ``flags[f][i]``.

        The add-on's own fields (GUID, type, system, blocklisted) come from the
        catalogue, ``amo_webext`` is the listed webextensions; ``nulls[f]`` marks
        entries whose flag ``f`` is null. The predicate runs once per distinct
        (add-on, flags) combination, so the generator applies the jobs' rule table
        itself at numpy speed.
        """
        nulls = nulls or {}
        names = list(flags)
        key = np.asarray(addon, dtype=np.int64)
        decode = []
        for name in names:
            values, codes = np.unique(np.asarray(flags[name]), return_inverse=True)
            values = [v.item() for v in values] + [None]
            codes = np.where(nulls[name], len(values) - 1, codes.ravel()) if name in nulls else codes.ravel()
            key = key * len(values) + codes
            decode.append(values)
        unique, inverse = np.unique(key, return_inverse=True)
        amo_webext = {g for g, ok in zip(self.guids, self.listed & self.is_webext, strict=True) if ok}
        verdicts = np.empty(len(unique), bool)
        for j, k in enumerate(unique.tolist()):
            record = {}
            for name, values in zip(reversed(names), reversed(decode), strict=True):
                k, code = divmod(k, len(values))
                record[name] = values[code]
            record.update(addon_id=self.guids[k], type=self.types[k], is_system=bool(self.is_system[k]),
                          blocklisted=bool(self.blocklisted[k]))
            verdicts[j] = is_eligible(record, amo_webext)
        return verdicts[inverse.ravel()]


def _iso(ts):
    return dt.datetime.fromtimestamp(int(ts), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _end_of_day_s(day: dt.date) -> int:
    return int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp())


def _make_identity(rng, n, n_system):
    """GUIDs, names and slugs: system add-ons, the excluded pioneer add-on, then generated ones."""
    system = list(SYSTEM_GUIDS[:n_system]) + [f"system-{i}@mozilla.org" for i in range(len(SYSTEM_GUIDS), n_system)]
    guids, names, slugs = [], [], []
    for g in system:
        guids.append(g)
        names.append(g.split("@")[0].replace("-", " ").title())
        slugs.append(g.split("@")[0])
    guids.append(EXCLUDED_GUID)
    names.append("Pioneer Opt-in")
    slugs.append("pioneer-opt-in")
    seen = set(guids)
    while len(guids) < n:
        name = f"{_ADJ[rng.integers(len(_ADJ))]} {_NOUN[rng.integers(len(_NOUN))]}"
        if name in names:
            name = f"{name} {int(rng.integers(2, 1000))}"
        slug = name.lower().replace(" ", "-")
        form = rng.random()
        if form < 0.4:
            b = rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex()
            guid = f"{{{b[:8]}-{b[8:12]}-4{b[13:16]}-{b[16:20]}-{b[20:]}}}"
        elif form < 0.45:
            guid = f"jid1-{rng.integers(0, 2**40):010x}@jetpack"
        else:
            guid = f"{slug}@{_DOMAINS[rng.integers(len(_DOMAINS))]}"
        if guid in seen or name in names:
            continue
        seen.add(guid)
        guids.append(guid)
        names.append(name)
        slugs.append(slug)
    return guids, names, slugs


def _make_versions(rng, created_s, horizon_s):
    """1–20 versions per add-on, the first within an hour of creation, all before ``horizon_s``."""
    offsets, strings, times = [0], [], []
    for c in created_s:
        n = int(rng.integers(1, 21))
        first = int(c) + int(rng.integers(60, 3600))
        later = np.sort(rng.integers(first + 1, max(first + 2, horizon_s), n - 1)) if n > 1 else np.array([], int)
        major, minor, patch = 1, 0, 0
        for k, t in enumerate([first, *later.tolist()]):
            if k:
                step = rng.random()
                if step < 0.1:
                    major, minor, patch = major + 1, 0, 0
                elif step < 0.5:
                    minor, patch = minor + 1, 0
                else:
                    patch += 1
            strings.append(f"{major}.{minor}.{patch}")
            times.append(t)
        offsets.append(len(strings))
    return np.array(offsets, dtype=np.int64), strings, np.array(times, dtype=np.int64)


def build_catalogue(params, rng) -> Catalogue:
    """Draw the catalogue, the curated list and the latent structure from ``rng``."""
    n, end = params.addons, params.end_date
    end_s = _end_of_day_s(end)
    n_system = params.system_addons
    guids, names, slugs = _make_identity(rng, n, n_system)
    n_loc, n_clu = len(LOCALES), params.clusters
    idx = np.arange(n)
    is_system = idx < n_system
    pioneer = idx == n_system
    free = np.flatnonzero(idx > n_system)  # generated add-ons, in a random role order below
    free = free[rng.permutation(len(free))]

    types = ["extension"] * n
    default_locales = ["en-US"] * n
    n_dict = min(n_loc, int(round(params.dictionary_share * n)))
    dictionaries = free[:n_dict]
    for k, i in enumerate(dictionaries):
        types[i] = "dictionary"
        default_locales[i] = LOCALES[k][0]
        names[i] = f"{LOCALES[k][0]} Dictionary"
        guids[i] = f"{LOCALES[k][0].lower()}@dictionaries.addons.mozilla.org"
        slugs[i] = f"{LOCALES[k][0].lower()}-dictionary"
    rest = free[n_dict:]

    def take_share(share, minimum=0):
        nonlocal rest
        k = min(len(rest), max(minimum, int(round(share * n))))
        out, rest = rest[:k], rest[k:]
        return out

    future = take_share(params.future_share, 1)
    legacy = take_share(params.legacy_share, 1)
    unlisted = take_share(params.unlisted_share, 1)
    blocked = take_share(params.blocklisted_share, 2)

    is_webext = np.ones(n, bool)
    is_webext[legacy] = False
    listed = ~is_system
    listed[unlisted] = False
    blocklisted = np.zeros(n, bool)
    blocklisted[blocked] = True

    # Creation times: spread over ~8 years, a share inside the last 60 days, a few after D.
    created_s = end_s - rng.integers(61 * DAY_S, 8 * 365 * DAY_S, n)
    recent = rng.random(n) < params.recent_share
    created_s[recent] = end_s - rng.integers(DAY_S, 59 * DAY_S, int(recent.sum()))
    created_s[future] = end_s + rng.integers(3600, DAY_S, len(future))
    created_s[is_system | pioneer] = end_s - 6 * 365 * DAY_S - idx[is_system | pioneer] * DAY_S
    version_offsets, version_strings, version_created_s = _make_versions(rng, created_s, end_s + 2 * DAY_S)

    rating = np.round(rng.uniform(3.0, 5.0, n), 2)
    low = rng.random(n) < params.low_rating_share
    rating[low] = np.round(rng.uniform(1.0, 2.99, int(low.sum())), 2)
    rating_count = rng.integers(1, 50000, n)

    installable = ~is_system & (created_s < end_s)
    popularity = np.zeros(n)
    inst = np.flatnonzero(installable)
    ranks = rng.permutation(len(inst)) + 1
    popularity[inst] = ranks ** -params.zipf_exponent
    popularity[pioneer] = 20.0 ** -params.zipf_exponent
    popularity[dictionaries] = 0.0  # dictionaries are locale-specific only
    popularity /= popularity.sum()

    # Cluster subsets: disjoint, drawn among installable extensions, favouring popular ones.
    extension = np.array([t == "extension" for t in types])
    pool = np.flatnonzero(installable & extension & ~pioneer)
    draw = pool[np.argsort(-np.log(rng.random(len(pool))) / np.sqrt(popularity[pool]))]
    size = max(3, int(round(params.cluster_subset_share * n)))
    cluster_of = np.full(n, -1)
    cluster_pref = np.zeros((n_clu, n))
    for c in range(n_clu):
        members = draw[c * size : (c + 1) * size]
        cluster_of[members] = c
        cluster_pref[c, members] = (np.arange(len(members)) + 1.0) ** -0.8
        cluster_pref[c] /= max(cluster_pref[c].sum(), 1e-12)
    outside = draw[n_clu * size :]

    locale_pref = np.zeros((n_loc, n))
    locale_addons = []
    per = params.locale_addons
    for k in range(n_loc):
        chosen = list(outside[k * per : (k + 1) * per])
        if k < n_dict:
            chosen.append(int(dictionaries[k]))
        locale_addons.append(np.array(chosen, dtype=np.int64))
        if chosen:
            locale_pref[k, chosen] = 1.0 / len(chosen)

    shares = np.array([s for _, s, _ in LOCALES])
    shares /= shares.sum()
    cluster_given_locale = rng.dirichlet(np.full(n_clu, params.cluster_concentration), n_loc)
    w_glob, w_clu, w_loc = params.mix_global, params.mix_cluster, params.mix_locale
    combo = (
        w_glob * popularity[None, None, :]
        + w_clu * cluster_pref[None, :, :]
        + w_loc * locale_pref[:, None, :]
    ).reshape(n_loc * n_clu, n)
    combo /= combo.sum(axis=1, keepdims=True)

    # Curated list: listed, eligible webextensions, rating >= 3.0, first file >= 60 days old at D.
    marginal = (shares[:, None] * cluster_given_locale).reshape(-1) @ combo
    city_base = (np.arange(MAX_CITIES) + 1.0) ** -0.7
    cat = Catalogue(
        guids=guids,
        names=names,
        slugs=slugs,
        default_locales=default_locales,
        types=types,
        is_system=is_system,
        is_webext=is_webext,
        listed=listed,
        blocklisted=blocklisted,
        created_s=created_s,
        rating=rating,
        rating_count=rating_count,
        promoted=[None] * n,
        version_offsets=version_offsets,
        version_strings=version_strings,
        version_created_s=version_created_s,
        curated=[],
        installable=installable,
        popularity=popularity,
        cluster_of=cluster_of,
        locale_addons=locale_addons,
        locale_names=[loc for loc, _, _ in LOCALES],
        locale_shares=shares,
        locale_cities=[c for _, _, c in LOCALES],
        cluster_given_locale=cluster_given_locale,
        combo_p=combo.astype(np.float32),
        city_weights=city_base[None, :] * rng.lognormal(0.0, 0.8, (n_clu, MAX_CITIES)),
        os_p=rng.dirichlet(np.array([0.75, 0.15, 0.10]) * 20, n_clu),
        feature_means=FEATURE_BASE[None, :] * rng.lognormal(0.0, 0.5, (n_clu, len(FEATURE_BASE))),
    )
    old_enough = cat.first_create_s <= end_s - 60 * DAY_S
    candidates = np.flatnonzero(cat.eligible_base() & (rating >= 3.0) & old_enough & (marginal > 0))
    cat.curated = _pick_curated(rng, candidates, marginal, params.recommended)
    for i in cat.curated:
        cat.promoted[i] = "recommended"
    others = np.flatnonzero(listed & ~np.isin(idx, cat.curated))
    for i in others[rng.random(len(others)) < 0.03]:
        cat.promoted[i] = "line" if rng.random() < 0.5 else "spotlight"

    return cat


def _pick_curated(rng, candidates, marginal, size):
    """Three quarters: the most popular candidates; the rest sampled by popularity."""
    if len(candidates) <= size:
        return sorted(candidates.tolist(), key=lambda i: -marginal[i])
    order = candidates[np.lexsort((candidates, -marginal[candidates]))]
    top = order[: (3 * size) // 4]
    remaining = order[len(top) :]
    p = marginal[remaining] / marginal[remaining].sum()
    extra = rng.choice(remaining, size - len(top), replace=False, p=p)
    return [int(i) for i in (*top, *extra)]


def amo_documents(cat: Catalogue, end_date: dt.date):
    """Return ``(catalogue_doc, editorial_doc)``: the neutral JSON that the fake AMO renders.

    Every add-on is present; ``listed: false`` ones (system, unlisted) are never
    served. The editorial list holds the curated GUIDs first, then a few promoted
    non-recommended entries, then malformed entries (null, empty, duplicate) real
    feeds have carried, which consumers must drop (SPEC §8.3).
    """
    addons = []
    file_id = 500000
    for i, guid in enumerate(cat.guids):
        lo, hi = cat.version_offsets[i], cat.version_offsets[i + 1]
        versions = []
        for v in range(lo, hi):
            file_id += 1
            versions.append(
                {
                    "id": 100000 + int(v),
                    "version": cat.version_strings[v],
                    "created": _iso(cat.version_created_s[v]),
                    "file": {
                        "id": file_id,
                        "created": _iso(cat.version_created_s[v]),
                        "is_webextension": bool(cat.is_webext[i]),
                        "size": 10000 + (file_id * 7919) % 900000,
                        "status": "public",
                    },
                }
            )
        name = {"en-US": cat.names[i]}
        if cat.default_locales[i] != "en-US":
            name[cat.default_locales[i]] = f"{cat.names[i]} ({cat.default_locales[i]})"
        addons.append(
            {
                "id": 1000 + i,
                "guid": guid,
                "slug": cat.slugs[i],
                "type": cat.types[i],
                "default_locale": cat.default_locales[i],
                "name": name,
                "summary": {"en-US": f"{cat.names[i]} for Firefox."},
                "created": _iso(cat.created_s[i]),
                "last_updated": versions[-1]["created"],
                "listed": bool(cat.listed[i]),
                "is_webextension": bool(cat.is_webext[i]),
                "ratings": {"average": float(cat.rating[i]), "count": int(cat.rating_count[i])},
                "average_daily_users": int(round(cat.popularity[i] * 5e6)),
                "promoted": cat.promoted[i],
                "category": _CATEGORIES[i % len(_CATEGORIES)],
                "versions": versions,  # oldest first
            }
        )
    editorial = [{"guid": cat.guids[i], "recommended": True} for i in cat.curated]
    editorial += [{"guid": cat.guids[i], "recommended": False} for i, p in enumerate(cat.promoted) if p == "line"][:5]
    if editorial:
        editorial += [{"guid": None, "recommended": True}, {"guid": "", "recommended": True}]
        editorial.append(dict(editorial[0]))
    catalogue_doc = {"end_date": end_date.isoformat(), "addons": addons}
    return catalogue_doc, {"end_date": end_date.isoformat(), "results": editorial}
