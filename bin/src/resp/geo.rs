//! The GEO commands, on sorted sets as Redis keeps them: a member's score
//! is its 52-bit geohash (26 bits of longitude and 26 of latitude,
//! interleaved, latitude limited to ±85.05112878° as in Web Mercator), so
//! `ZRANGE`, `ZREM`, `ZCARD`... work on a GEO key and `GEOADD` is a
//! `ZADD`.
//!
//! `GEOADD` goes through the log as one `ZADD` of the encoded scores. The
//! reads (`GEOPOS`, `GEODIST`, `GEOHASH`, `GEOSEARCH`, `GEORADIUS[_RO]`,
//! `GEORADIUSBYMEMBER[_RO]`) are one query of the key's group with the
//! connection's consistency; the node decodes and measures here. A search
//! reads the whole set and keeps what lies in the shape (O(members), where
//! Redis scans the nine geohash boxes around the centre): right for sets of
//! thousands of places, slow for millions. `STORE` / `STOREDIST` and
//! `GEOSEARCHSTORE` are not supported (an error says so).
//!
//! Distances use Redis' haversine and Earth radius, so they match Redis to
//! its printed precision (4 decimals); coordinates are the centre of the
//! member's geohash cell, printed as the shortest text that reads back as
//! the same `f64` (Redis prints 17 significant digits of a `long double`:
//! the same number to ~1e-14).

use bytes::Bytes;
use flotilla::GroupId;
use flotilla_rsm::kv::KEYS_PER_COMMAND_MAX;
use flotilla_rsm::ZAddCondition;
use flotilla_rsm::{KvCommand, KvQuery, KvResult, TypedCommand, TypedQuery, ZAddCompare};

use super::command::{CommandInfo, Op, Sub};
use super::reply::Reply;

/// Commands of this module: name, arity, flags, first key, last key, step
/// (the fields of a COMMAND reply).
pub const COMMANDS: &[CommandInfo] = &[
    ("geoadd", -5, &["write", "denyoom"], 1, 1, 1),
    ("geopos", -2, &["readonly"], 1, 1, 1),
    ("geodist", -4, &["readonly"], 1, 1, 1),
    ("geohash", -2, &["readonly"], 1, 1, 1),
    ("geosearch", -7, &["readonly"], 1, 1, 1),
    ("georadius", -6, &["readonly"], 1, 1, 1),
    ("georadius_ro", -6, &["readonly"], 1, 1, 1),
    ("georadiusbymember", -5, &["readonly"], 1, 1, 1),
    ("georadiusbymember_ro", -5, &["readonly"], 1, 1, 1),
];

/// Longitude range of the encoding.
const LON_MIN: f64 = -180.0;
const LON_MAX: f64 = 180.0;
/// Latitude range of the encoding (Web Mercator's limit, as Redis).
const LAT_MIN: f64 = -85.05112878;
const LAT_MAX: f64 = 85.05112878;
/// Bits per coordinate.
const STEP: u32 = 26;
/// Redis' Earth radius for its haversine, in metres.
const EARTH_RADIUS_M: f64 = 6372797.560856;
/// The geohash alphabet (GEOHASH).
const BASE32: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Spreads the low 32 bits of `v` to the even bits of the result.
fn spread(v: u32) -> u64 {
    let mut x = u64::from(v);
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    (x | (x << 1)) & 0x5555_5555_5555_5555
}

/// The inverse of [`spread`]: the even bits of `x`, packed.
fn squash(x: u64) -> u32 {
    let mut x = x & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    ((x | (x >> 16)) & 0x0000_0000_FFFF_FFFF) as u32
}

/// The cell index of `v` in `[min, max]` split into 2^26 cells. As in
/// Redis, the top of the range is index 2^26 (one bit past the 26: such a
/// score has 53 or 54 bits and decodes to the range's edge).
fn cell(v: f64, min: f64, max: f64) -> u32 {
    ((v - min) / (max - min) * f64::from(1u32 << STEP)) as u32
}

/// The 52-bit geohash of a position within the given latitude range
/// (latitude in the even bits, longitude in the odd ones).
fn encode_in(lon: f64, lat: f64, lat_min: f64, lat_max: f64) -> u64 {
    spread(cell(lat, lat_min, lat_max)) | (spread(cell(lon, LON_MIN, LON_MAX)) << 1)
}

/// A position's score.
pub fn encode(lon: f64, lat: f64) -> u64 {
    encode_in(lon, lat, LAT_MIN, LAT_MAX)
}

/// The centre of a score's cell: (longitude, latitude), computed as Redis
/// does (the mean of the cell's edges, clamped to the ranges), so that the
/// same score gives the same `f64`s.
pub fn decode(hash: u64) -> (f64, f64) {
    let cells = f64::from(1u32 << STEP);
    let centre = |c: u32, min: f64, max: f64| {
        let lo = min + (f64::from(c) / cells) * (max - min);
        let hi = min + ((f64::from(c) + 1.0) / cells) * (max - min);
        ((lo + hi) / 2.0).clamp(min, max)
    };
    (
        centre(squash(hash >> 1), LON_MIN, LON_MAX),
        centre(squash(hash), LAT_MIN, LAT_MAX),
    )
}

/// The standard 11-character geohash of a score (re-encoded with the
/// latitude range ±90°, as GEOHASH does; the 11th character is always `0`:
/// the score has 52 bits, the text 55).
pub fn geohash_text(hash: u64) -> String {
    let (lon, lat) = decode(hash);
    let bits = encode_in(lon, lat, -90.0, 90.0);
    (0..11)
        .map(|i| {
            let idx = if i == 10 {
                0
            } else {
                ((bits >> (52 - (i + 1) * 5)) & 0x1f) as usize
            };
            char::from(BASE32[idx])
        })
        .collect()
}

/// Distance in metres along the latitude only.
fn lat_distance(lat1: f64, lat2: f64) -> f64 {
    EARTH_RADIUS_M * (lat2.to_radians() - lat1.to_radians()).abs()
}

/// Redis' haversine distance in metres.
pub fn distance(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let v = ((lon2.to_radians() - lon1.to_radians()) / 2.0).sin();
    if v == 0.0 {
        return lat_distance(lat1, lat2);
    }
    let u = ((lat2.to_radians() - lat1.to_radians()) / 2.0).sin();
    let a = u * u + lat1.to_radians().cos() * lat2.to_radians().cos() * v * v;
    2.0 * EARTH_RADIUS_M * a.sqrt().asin()
}

/// A distance unit and its length in metres.
fn unit(b: &[u8]) -> Option<f64> {
    match b.to_ascii_lowercase().as_slice() {
        b"m" => Some(1.0),
        b"km" => Some(1000.0),
        b"ft" => Some(0.3048),
        b"mi" => Some(1609.34),
        _ => None,
    }
}

const BAD_UNIT: &str = "unsupported unit provided. please use M, KM, FT, MI";

/// A float argument as Redis reads one (no NaN).
fn float(b: &[u8]) -> Option<f64> {
    let v: f64 = std::str::from_utf8(b).ok()?.trim().parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A coordinate pair, checked against the encodable ranges.
fn position(lon: &[u8], lat: &[u8]) -> Result<(f64, f64), Reply> {
    let (Some(lon), Some(lat)) = (float(lon), float(lat)) else {
        return Err(Reply::err("value is not a valid float"));
    };
    if !(LON_MIN..=LON_MAX).contains(&lon) || !(LAT_MIN..=LAT_MAX).contains(&lat) {
        return Err(Reply::err(format!(
            "invalid longitude,latitude pair {lon:.6},{lat:.6}"
        )));
    }
    Ok((lon, lat))
}

/// Where a search is centred.
#[derive(Debug, Clone, PartialEq)]
pub enum Center {
    /// FROMLONLAT / GEORADIUS.
    LonLat(f64, f64),
    /// FROMMEMBER / GEORADIUSBYMEMBER: a member of the same set.
    Member(Bytes),
}

/// The area a search keeps, in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// BYRADIUS.
    Radius(f64),
    /// BYBOX: width, height.
    Box(f64, f64),
}

/// Result order of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// As found (score order).
    None,
    /// Nearest first.
    Asc,
    /// Farthest first.
    Desc,
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    center: Center,
    shape: Shape,
    /// Metres per unit of the distances given and printed.
    unit: f64,
    order: Order,
    /// COUNT n, and ANY (stop at the first n found).
    count: Option<(u64, bool)>,
    with_coord: bool,
    with_dist: bool,
    with_hash: bool,
}

/// How a GEO read's result becomes its reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// GEOADD: the ZADD count.
    Int,
    /// GEOPOS: scores (ZMSCORE) as `[lon, lat]` or nil each.
    Pos,
    /// GEOHASH: scores as geohash texts or nil each.
    Hash,
    /// GEODIST: two scores; the distance in this unit (metres per unit).
    Dist(f64),
    /// A search over the whole set (ZRANGE 0 -1 WITHSCORES).
    Search(Box<Search>),
}

/// What a GEO command needs.
#[derive(Debug)]
pub enum Outcome {
    /// Answered at once (an error).
    Reply(Reply),
    /// One KV request and how its result becomes the reply.
    Plan(Sub, Finish),
}

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Parses a GEO command (`name` upper case, `args` after the name). `None`
/// if `name` is not one; `group_for` routes the key.
pub fn prepare(
    name: &str,
    args: &[Bytes],
    group_for: &dyn Fn(&[u8]) -> GroupId,
) -> Option<Outcome> {
    let info = COMMANDS.iter().find(|c| c.0.eq_ignore_ascii_case(name))?;
    if !super::command::arity_ok(info, args.len()) {
        return Some(Outcome::Reply(arity(name)));
    }
    let key = &args[0];
    let sub = |op: Op| Sub {
        group: group_for(key),
        op,
    };
    let read = |q: TypedQuery| sub(Op::Read(KvQuery::Typed(q)));
    let planned = match name {
        "GEOADD" => prepare_add(key, &args[1..])
            .map(|cmd| (sub(Op::Write(KvCommand::Typed(cmd))), Finish::Int)),
        "GEOPOS" | "GEOHASH" => {
            if args.len() - 1 > KEYS_PER_COMMAND_MAX as usize {
                Err(Reply::err(format!(
                    "too many members (at most {KEYS_PER_COMMAND_MAX})"
                )))
            } else {
                Ok((
                    read(TypedQuery::ZMScore {
                        key: key.clone(),
                        members: args[1..].to_vec(),
                    }),
                    if name == "GEOPOS" {
                        Finish::Pos
                    } else {
                        Finish::Hash
                    },
                ))
            }
        }
        "GEODIST" => match args.len() {
            3 => Ok(1.0),
            4 => unit(&args[3]).ok_or_else(|| Reply::err(BAD_UNIT)),
            _ => Err(Reply::err("syntax error")),
        }
        .map(|per_unit| {
            (
                read(TypedQuery::ZMScore {
                    key: key.clone(),
                    members: vec![args[1].clone(), args[2].clone()],
                }),
                Finish::Dist(per_unit),
            )
        }),
        _ => prepare_search(name, &args[1..]).map(|search| {
            (
                read(TypedQuery::ZRange {
                    key: key.clone(),
                    start: 0,
                    stop: -1,
                    rev: false,
                    with_scores: true,
                }),
                Finish::Search(Box::new(search)),
            )
        }),
    };
    Some(match planned {
        Ok((sub, finish)) => Outcome::Plan(sub, finish),
        Err(reply) => Outcome::Reply(reply),
    })
}

/// GEOADD's arguments after the key: `[NX|XX] [CH] lon lat member ...`.
fn prepare_add(key: &Bytes, rest: &[Bytes]) -> Result<TypedCommand, Reply> {
    let (mut nx, mut xx, mut ch) = (false, false, false);
    let mut i = 0;
    while i < rest.len() {
        match rest[i].to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"CH" => ch = true,
            _ => break,
        }
        i += 1;
    }
    let triples = &rest[i..];
    if triples.is_empty() || triples.len() % 3 != 0 {
        return Err(Reply::err("syntax error"));
    }
    if nx && xx {
        return Err(Reply::err("syntax error"));
    }
    if triples.len() / 3 > KEYS_PER_COMMAND_MAX as usize {
        return Err(Reply::err(format!(
            "too many members (at most {KEYS_PER_COMMAND_MAX})"
        )));
    }
    let mut pairs = Vec::with_capacity(triples.len() / 3);
    for t in triples.chunks(3) {
        let (lon, lat) = position(&t[0], &t[1])?;
        // A 52-bit integer: exact as an f64.
        pairs.push((encode(lon, lat) as f64, t[2].clone()));
    }
    Ok(TypedCommand::ZAdd {
        key: key.clone(),
        condition: if nx {
            ZAddCondition::IfAbsent
        } else if xx {
            ZAddCondition::IfPresent
        } else {
            ZAddCondition::Always
        },
        compare: ZAddCompare::None,
        changed: ch,
        incr: false,
        pairs,
    })
}

/// A search's arguments after the key, for GEOSEARCH and the GEORADIUS
/// family.
fn prepare_search(name: &str, rest: &[Bytes]) -> Result<Search, Reply> {
    let mut search = Search {
        center: Center::LonLat(0.0, 0.0),
        shape: Shape::Radius(0.0),
        unit: 1.0,
        order: Order::None,
        count: None,
        with_coord: false,
        with_dist: false,
        with_hash: false,
    };
    let syntax = || Reply::err("syntax error");
    let dist_arg = |b: &Bytes| match float(b) {
        Some(v) if v >= 0.0 => Ok(v),
        Some(_) => Err(Reply::err("radius cannot be negative")),
        None => Err(Reply::err("need numeric radius")),
    };
    let unit_arg = |b: &Bytes| unit(b).ok_or_else(|| Reply::err(BAD_UNIT));
    let geosearch = name == "GEOSEARCH";
    let mut i = 0;
    let (mut center, mut shape) = (None, None);
    if !geosearch {
        // GEORADIUS key lon lat radius unit / GEORADIUSBYMEMBER key member
        // radius unit, then the options.
        let by_member = name.starts_with("GEORADIUSBYMEMBER");
        if by_member {
            center = Some(Center::Member(rest[0].clone()));
            i = 1;
        } else {
            let (lon, lat) = position(&rest[0], &rest[1])?;
            center = Some(Center::LonLat(lon, lat));
            i = 2;
        }
        let per_unit = unit_arg(&rest[i + 1])?;
        shape = Some(Shape::Radius(dist_arg(&rest[i])? * per_unit));
        search.unit = per_unit;
        i += 2;
    }
    while i < rest.len() {
        let left = rest.len() - i - 1;
        match rest[i].to_ascii_uppercase().as_slice() {
            b"WITHCOORD" => search.with_coord = true,
            b"WITHDIST" => search.with_dist = true,
            b"WITHHASH" => search.with_hash = true,
            b"ASC" => search.order = Order::Asc,
            b"DESC" => search.order = Order::Desc,
            b"COUNT" if left >= 1 => {
                let n: i64 = std::str::from_utf8(&rest[i + 1])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| Reply::err("value is not an integer or out of range"))?;
                if n <= 0 {
                    return Err(Reply::err("COUNT must be > 0"));
                }
                let any = rest
                    .get(i + 2)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"ANY"));
                search.count = Some((n as u64, any));
                i += 1 + usize::from(any);
            }
            b"FROMMEMBER" if geosearch && left >= 1 && center.is_none() => {
                center = Some(Center::Member(rest[i + 1].clone()));
                i += 1;
            }
            b"FROMLONLAT" if geosearch && left >= 2 && center.is_none() => {
                let (lon, lat) = position(&rest[i + 1], &rest[i + 2])?;
                center = Some(Center::LonLat(lon, lat));
                i += 2;
            }
            b"BYRADIUS" if geosearch && left >= 2 && shape.is_none() => {
                let per_unit = unit_arg(&rest[i + 2])?;
                shape = Some(Shape::Radius(dist_arg(&rest[i + 1])? * per_unit));
                search.unit = per_unit;
                i += 2;
            }
            b"BYBOX" if geosearch && left >= 3 && shape.is_none() => {
                let (Some(w), Some(h)) = (float(&rest[i + 1]), float(&rest[i + 2])) else {
                    return Err(Reply::err("need numeric width and height"));
                };
                if w < 0.0 || h < 0.0 {
                    return Err(Reply::err("height or width cannot be negative"));
                }
                let per_unit = unit_arg(&rest[i + 3])?;
                shape = Some(Shape::Box(w * per_unit, h * per_unit));
                search.unit = per_unit;
                i += 3;
            }
            b"ANY" => return Err(Reply::err("the ANY argument requires COUNT argument")),
            b"STORE" | b"STOREDIST" if !geosearch => {
                return Err(Reply::err(
                    "STORE and STOREDIST are not supported: search, then ZADD",
                ));
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    let Some(center) = center else {
        return Err(Reply::err(
            "exactly one of FROMMEMBER or FROMLONLAT can be specified for GEOSEARCH",
        ));
    };
    let Some(shape) = shape else {
        return Err(Reply::err(
            "exactly one of BYRADIUS and BYBOX arguments must be provided for GEOSEARCH",
        ));
    };
    // COUNT without an order keeps the nearest (Redis sorts then).
    if search.order == Order::None && search.count.is_some_and(|(_, any)| !any) {
        search.order = Order::Asc;
    }
    search.center = center;
    search.shape = shape;
    Ok(search)
}

/// A score as the sorted set prints it, back to the geohash (at most 54
/// bits: see [`cell`]).
fn score_hash(text: &[u8]) -> Option<u64> {
    let v = float(text)?;
    (v >= 0.0 && v < (1u64 << 54) as f64 && v.fract() == 0.0).then_some(v as u64)
}

/// A coordinate as Redis prints one: 17 decimals, trailing zeros (and a
/// trailing point) dropped; a double in RESP3, a bulk string in RESP2.
fn coord(v: f64) -> Reply {
    let text = format!("{v:.17}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    let text = if text == "-0" { "0" } else { text };
    Reply::Double(Bytes::copy_from_slice(text.as_bytes()))
}

/// A distance in `per_unit` metres, as Redis prints it (4 decimals).
fn dist_text(meters: f64, per_unit: f64) -> Reply {
    Reply::text(format!("{:.4}", meters / per_unit))
}

fn unexpected(r: &KvResult) -> Reply {
    tracing::error!(result = ?r, "unexpected KV result kind");
    Reply::err("internal error: unexpected result kind")
}

/// The reply of a GEO command from its (non-error) result.
pub fn finish(f: Finish, result: Option<KvResult>) -> Reply {
    let scores = |r: &Option<KvResult>| match r {
        Some(KvResult::Values(v)) => Ok(v
            .iter()
            .map(|s| s.as_deref().and_then(score_hash))
            .collect::<Vec<_>>()),
        Some(r) => Err(unexpected(r)),
        None => Ok(Vec::new()),
    };
    match f {
        Finish::Int => match result {
            Some(KvResult::Count(n)) => Reply::Int(n as i64),
            Some(KvResult::Int(n)) => Reply::Int(n),
            Some(r) => unexpected(&r),
            None => Reply::Int(0),
        },
        Finish::Pos => match scores(&result) {
            Ok(hashes) => Reply::Array(
                hashes
                    .into_iter()
                    .map(|h| match h {
                        Some(h) => {
                            let (lon, lat) = decode(h);
                            Reply::Array(vec![coord(lon), coord(lat)])
                        }
                        None => Reply::NilArray,
                    })
                    .collect(),
            ),
            Err(e) => e,
        },
        Finish::Hash => match scores(&result) {
            Ok(hashes) => Reply::Array(
                hashes
                    .into_iter()
                    .map(|h| h.map_or(Reply::Nil, |h| Reply::text(geohash_text(h))))
                    .collect(),
            ),
            Err(e) => e,
        },
        Finish::Dist(per_unit) => match scores(&result) {
            Ok(h) => match (h.first().copied().flatten(), h.get(1).copied().flatten()) {
                (Some(a), Some(b)) => {
                    let (lon1, lat1) = decode(a);
                    let (lon2, lat2) = decode(b);
                    dist_text(distance(lon1, lat1, lon2, lat2), per_unit)
                }
                _ => Reply::Nil,
            },
            Err(e) => e,
        },
        Finish::Search(search) => match result {
            Some(KvResult::Items(items)) => run_search(&search, &items),
            Some(r) => unexpected(&r),
            None => Reply::Array(Vec::new()),
        },
    }
}

/// One place a search found.
struct Found {
    member: Bytes,
    hash: u64,
    lon: f64,
    lat: f64,
    meters: f64,
}

/// A search over the set's interleaved member, score items.
fn run_search(s: &Search, items: &[Bytes]) -> Reply {
    if items.is_empty() {
        // No key (a sorted set is never empty): nothing, whatever the
        // centre, as Redis answers.
        return Reply::Array(Vec::new());
    }
    let places = items.chunks(2).filter_map(|p| {
        let hash = score_hash(p.get(1)?)?;
        Some((p[0].clone(), hash))
    });
    let (clon, clat) = match &s.center {
        Center::LonLat(lon, lat) => (*lon, *lat),
        Center::Member(m) => {
            let found = items
                .chunks(2)
                .find(|p| p[0] == *m)
                .and_then(|p| score_hash(p.get(1)?));
            match found {
                Some(h) => decode(h),
                None => return Reply::err("could not decode requested zset member"),
            }
        }
    };
    let mut found: Vec<Found> = Vec::new();
    for (member, hash) in places {
        let (lon, lat) = decode(hash);
        let meters = match s.shape {
            Shape::Radius(r) => {
                let d = distance(clon, clat, lon, lat);
                if d > r {
                    continue;
                }
                d
            }
            Shape::Box(w, h) => {
                if lat_distance(clat, lat) > h / 2.0 || distance(clon, lat, lon, lat) > w / 2.0 {
                    continue;
                }
                distance(clon, clat, lon, lat)
            }
        };
        found.push(Found {
            member,
            hash,
            lon,
            lat,
            meters,
        });
        if let Some((n, true)) = s.count {
            if found.len() as u64 >= n {
                break;
            }
        }
    }
    match s.order {
        Order::None => {}
        Order::Asc => found.sort_by(|a, b| a.meters.total_cmp(&b.meters)),
        Order::Desc => found.sort_by(|a, b| b.meters.total_cmp(&a.meters)),
    }
    if let Some((n, _)) = s.count {
        found.truncate(usize::try_from(n).unwrap_or(usize::MAX));
    }
    let plain = !(s.with_coord || s.with_dist || s.with_hash);
    Reply::Array(
        found
            .into_iter()
            .map(|f| {
                if plain {
                    return Reply::Bulk(f.member);
                }
                let mut item = vec![Reply::Bulk(f.member)];
                if s.with_dist {
                    item.push(dist_text(f.meters, s.unit));
                }
                if s.with_hash {
                    item.push(Reply::Int(f.hash as i64));
                }
                if s.with_coord {
                    item.push(Reply::Array(vec![coord(f.lon), coord(f.lat)]));
                }
                Reply::Array(item)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn plan(line: &str) -> Result<(Sub, Finish), Reply> {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap().to_ascii_uppercase();
        let rest: Vec<Bytes> = words.map(b).collect();
        match prepare(&name, &rest, &|_| GroupId(1)) {
            Some(Outcome::Plan(sub, f)) => Ok((sub, f)),
            Some(Outcome::Reply(r)) => Err(r),
            None => panic!("{name} is not a GEO command"),
        }
    }

    fn err_of(line: &str) -> String {
        match plan(line) {
            Err(Reply::Error(e)) => e,
            other => panic!("{line}: no error: {other:?}"),
        }
    }

    /// Redis 7.0's own figures for its documentation's example (Palermo and
    /// Catania): scores, geohash texts, coordinates and distances.
    const PALERMO: u64 = 3479099956230698;
    const CATANIA: u64 = 3479447370796909;

    #[test]
    fn encoding_matches_redis() {
        assert_eq!(encode(13.361389, 38.115556), PALERMO);
        assert_eq!(encode(15.087269, 37.502669), CATANIA);
        assert_eq!(geohash_text(PALERMO), "sqc8b49rny0");
        assert_eq!(geohash_text(CATANIA), "sqdtr74hyu0");
        let (lon, lat) = decode(PALERMO);
        assert_eq!(coord(lon), Reply::Double(b("13.36138933897018433")));
        assert_eq!(coord(lat), Reply::Double(b("38.11555639549629859")));
        let (lon2, lat2) = decode(CATANIA);
        assert_eq!(
            dist_text(distance(lon, lat, lon2, lat2), 1.0),
            Reply::text("166274.1516")
        );
        assert_eq!(
            dist_text(distance(lon, lat, lon2, lat2), 1000.0),
            Reply::text("166.2742")
        );
        // The range's edges: the top is one cell past the 26 bits, as in
        // Redis, and decodes to the edge itself.
        let (lon, lat) = decode(encode(180.0, LAT_MAX));
        assert_eq!((lon, lat), (180.0, LAT_MAX));
        assert_eq!(coord(lat), Reply::Double(b("85.0511287799999991")));
        assert_eq!(coord(0.0), Reply::Double(b("0")));
    }

    #[test]
    fn bits_interleave_and_come_back() {
        for v in [0u32, 1, 0x2AA_AAAA, 0x3FF_FFFF, 1 << 26, 12345678] {
            assert_eq!(squash(spread(v)), v);
            assert_eq!(squash(spread(v) << 1 >> 1), v);
        }
        assert_eq!(spread(0b11), 0b101);
        // Every position lands in the cell whose centre is within half a
        // cell of it (~0.6 m).
        let mut seed = 7u64;
        for _ in 0..1000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let lon = (seed >> 11) as f64 / (1u64 << 53) as f64 * 360.0 - 180.0;
            let lat = (seed >> 7 & 0xFFFF) as f64 / 65536.0 * 170.0 - 85.0;
            let (dlon, dlat) = decode(encode(lon, lat));
            assert!(distance(lon, lat, dlon, dlat) < 1.0, "{lon},{lat}");
        }
    }

    #[test]
    fn geoadd_is_a_zadd_of_the_scores() {
        let (sub, f) = plan("geoadd k NX CH 13.361389 38.115556 Palermo").unwrap();
        assert_eq!(f, Finish::Int);
        match sub.op {
            Op::Write(KvCommand::Typed(TypedCommand::ZAdd {
                condition,
                changed,
                pairs,
                ..
            })) => {
                assert_eq!(condition, ZAddCondition::IfAbsent);
                assert!(changed);
                assert_eq!(pairs, vec![(PALERMO as f64, b("Palermo"))]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err_of("geoadd k NX XX 1 2 m"), "ERR syntax error");
        assert_eq!(err_of("geoadd k 1 2 m 3"), "ERR syntax error");
        assert_eq!(
            err_of("geoadd k 200 100 m"),
            "ERR invalid longitude,latitude pair 200.000000,100.000000"
        );
        assert_eq!(err_of("geoadd k 1 x m"), "ERR value is not a valid float");
        assert!(err_of("geoadd k 1 2").contains("wrong number of arguments"));
    }

    #[test]
    fn search_options_parse_with_redis_errors() {
        assert_eq!(
            err_of("geosearch k BYRADIUS 1 km ASC WITHDIST"),
            "ERR exactly one of FROMMEMBER or FROMLONLAT can be specified for GEOSEARCH"
        );
        assert_eq!(
            err_of("geosearch k FROMLONLAT 1 2 ASC WITHDIST"),
            "ERR exactly one of BYRADIUS and BYBOX arguments must be provided for GEOSEARCH"
        );
        assert_eq!(
            err_of("geosearch k FROMLONLAT 1 2 BYRADIUS 1 km BYBOX 1 1 km"),
            "ERR syntax error"
        );
        assert_eq!(
            err_of("geosearch k FROMLONLAT 1 2 BYRADIUS 1 parsec"),
            format!("ERR {BAD_UNIT}")
        );
        assert_eq!(
            err_of("geosearch k FROMLONLAT 1 2 BYRADIUS 1 km COUNT 0"),
            "ERR COUNT must be > 0"
        );
        assert_eq!(
            err_of("geosearch k FROMLONLAT 1 2 BYRADIUS 1 km ANY"),
            "ERR the ANY argument requires COUNT argument"
        );
        assert!(err_of("georadius k 1 2 3 km STORE d").contains("not supported"));
        // COUNT without an order keeps the nearest; with ANY, as found.
        let search = |line: &str| match plan(line).unwrap().1 {
            Finish::Search(s) => *s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            search("geosearch k FROMLONLAT 1 2 BYRADIUS 1 km COUNT 3").order,
            Order::Asc
        );
        assert_eq!(
            search("geosearch k FROMLONLAT 1 2 BYRADIUS 1 km COUNT 3 ANY").order,
            Order::None
        );
        let s = search("georadiusbymember k m 2 km WITHDIST DESC");
        assert_eq!(s.center, Center::Member(b("m")));
        assert_eq!(s.shape, Shape::Radius(2000.0));
        assert!(s.with_dist && s.order == Order::Desc);
    }

    /// The three places of Redis' documentation, searched as Redis answers.
    #[test]
    fn searches_answer_as_redis() {
        let items = |places: &[(&str, u64)]| {
            places
                .iter()
                .flat_map(|(m, h)| [b(m), b(&h.to_string())])
                .collect::<Vec<_>>()
        };
        let edge = encode(12.758489, 38.788135);
        let set = items(&[("Palermo", PALERMO), ("edge", edge), ("Catania", CATANIA)]);
        let run = |line: &str| match plan(line).unwrap().1 {
            Finish::Search(s) => run_search(&s, &set),
            other => panic!("{other:?}"),
        };
        let names = |r: Reply| match r {
            Reply::Array(v) => v
                .into_iter()
                .map(|x| match x {
                    Reply::Bulk(m) => String::from_utf8(m.to_vec()).unwrap(),
                    Reply::Array(mut parts) => match parts.remove(0) {
                        Reply::Bulk(m) => String::from_utf8(m.to_vec()).unwrap(),
                        other => panic!("{other:?}"),
                    },
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            names(run("georadius k 15 37 200 km ASC")),
            ["Catania", "Palermo"]
        );
        assert_eq!(
            names(run("georadius k 15 37 200 km DESC")),
            ["Palermo", "Catania"]
        );
        assert_eq!(
            names(run("geosearch k FROMLONLAT 15 37 BYBOX 400 400 km ASC")),
            ["Catania", "Palermo", "edge"]
        );
        assert_eq!(
            names(run("geosearch k FROMMEMBER Palermo BYRADIUS 100 km ASC")),
            ["Palermo", "edge"]
        );
        assert_eq!(
            run("georadius k 15 37 200 km WITHDIST WITHHASH WITHCOORD COUNT 1"),
            Reply::Array(vec![Reply::Array(vec![
                Reply::text("Catania"),
                Reply::text("56.4413"),
                Reply::Int(CATANIA as i64),
                Reply::Array(vec![
                    Reply::Double(b("15.08726745843887329")),
                    Reply::Double(b("37.50266842333162032")),
                ]),
            ])])
        );
        assert_eq!(
            run("geosearch k FROMMEMBER Nope BYRADIUS 1 km"),
            Reply::err("could not decode requested zset member")
        );
        match plan("geosearch k FROMMEMBER Nope BYRADIUS 1 km").unwrap().1 {
            Finish::Search(s) => assert_eq!(run_search(&s, &[]), Reply::Array(vec![])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_finish_from_the_scores() {
        let scores = KvResult::Values(vec![Some(b(&PALERMO.to_string())), None]);
        assert_eq!(
            finish(Finish::Pos, Some(scores.clone())),
            Reply::Array(vec![
                Reply::Array(vec![
                    Reply::Double(b("13.36138933897018433")),
                    Reply::Double(b("38.11555639549629859")),
                ]),
                Reply::NilArray,
            ])
        );
        assert_eq!(
            finish(Finish::Hash, Some(scores.clone())),
            Reply::Array(vec![Reply::text("sqc8b49rny0"), Reply::Nil])
        );
        assert_eq!(finish(Finish::Dist(1.0), Some(scores)), Reply::Nil);
        let both = KvResult::Values(vec![
            Some(b(&PALERMO.to_string())),
            Some(b(&CATANIA.to_string())),
        ]);
        assert_eq!(
            finish(Finish::Dist(1609.34), Some(both)),
            Reply::text("103.3182")
        );
        assert_eq!(err_of("geodist k a b parsec"), format!("ERR {BAD_UNIT}"));
    }
}
