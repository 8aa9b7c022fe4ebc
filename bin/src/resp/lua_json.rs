//! `cjson` for Lua scripts: `cjson.encode(value)`, `cjson.decode(text)`
//! and `cjson.null`, as Redis' lua-cjson 2.1 behaves for what scripts use:
//! a table whose keys are the integers 1..n is an array (holes are
//! `null`; a table with far more holes than values is refused, as cjson
//! refuses "excessively sparse" arrays), any other table an object (number
//! keys become strings), the empty table `{}`; `/` is escaped as `\/`;
//! integers print without a fraction; nesting deeper than 1,000 is an
//! error. Decoding gives tables, numbers, strings, booleans and
//! `cjson.null` for `null`.

use mlua::{Lua, LuaString, Table, Value};

/// Deepest nesting either way (lua-cjson's default).
const DEPTH_MAX: usize = 1000;

/// The `cjson` table.
pub fn table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let mut out = Vec::new();
            encode(&v, &mut out, 0).map_err(mlua::Error::RuntimeError)?;
            lua.create_string(&out)
        })?,
    )?;
    t.raw_set(
        "decode",
        lua.create_function(|lua, s: LuaString| {
            let json: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::RuntimeError(format!("cjson.decode: {e}")))?;
            decode(lua, &json, 0)
        })?,
    )?;
    t.raw_set("null", Value::NULL)?;
    Ok(t)
}

fn encode(v: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    match v {
        Value::Nil => out.extend_from_slice(b"null"),
        Value::LightUserData(p) if p.0.is_null() => out.extend_from_slice(b"null"),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Integer(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Number(n) => {
            if !n.is_finite() {
                return Err("Cannot serialise number: must not be NaN or Inf".into());
            }
            if n.fract() == 0.0 && n.abs() < 1e15 {
                out.extend_from_slice((*n as i64).to_string().as_bytes());
            } else {
                out.extend_from_slice(n.to_string().as_bytes());
            }
        }
        Value::String(s) => encode_string(&s.as_bytes(), out),
        Value::Table(t) => {
            if depth >= DEPTH_MAX {
                return Err(format!(
                    "Cannot serialise, excessive nesting ({})",
                    depth + 1
                ));
            }
            encode_table(t, out, depth + 1)?;
        }
        other => {
            return Err(format!(
                "Cannot serialise {}: type not supported",
                other.type_name()
            ))
        }
    }
    Ok(())
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'/' => out.extend_from_slice(b"\\/"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b if b < 0x20 || b == 0x7f => {
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
}

fn encode_table(t: &Table, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
    let mut pairs = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        pairs.push(pair.map_err(|e| e.to_string())?);
    }
    // An array: every key a positive integer (Lua 5.1 numbers may arrive
    // as floats with no fraction).
    let index = |k: &Value| match k {
        Value::Integer(n) if *n >= 1 => Some(*n as u64),
        Value::Number(n) if *n >= 1.0 && n.fract() == 0.0 && *n < 9e15 => Some(*n as u64),
        _ => None,
    };
    let indexes: Option<Vec<u64>> = pairs.iter().map(|(k, _)| index(k)).collect();
    match indexes {
        Some(idx) if !idx.is_empty() => {
            let max = idx.iter().copied().max().unwrap_or(0);
            if max > 10 && max > 2 * idx.len() as u64 {
                return Err("Cannot serialise table: excessively sparse array".into());
            }
            out.push(b'[');
            for i in 1..=max {
                if i > 1 {
                    out.push(b',');
                }
                let v: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                encode(&v, out, depth)?;
            }
            out.push(b']');
        }
        _ => {
            out.push(b'{');
            for (n, (k, v)) in pairs.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                match k {
                    Value::String(s) => encode_string(&s.as_bytes(), out),
                    Value::Integer(_) | Value::Number(_) => {
                        let mut key = Vec::new();
                        encode(k, &mut key, depth)?;
                        encode_string(&key, out);
                    }
                    other => {
                        return Err(format!(
                            "Cannot serialise {}: table key must be a number or string",
                            other.type_name()
                        ))
                    }
                }
                out.push(b':');
                encode(v, out, depth)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn decode(lua: &Lua, v: &serde_json::Value, depth: usize) -> mlua::Result<Value> {
    if depth > DEPTH_MAX {
        return Err(mlua::Error::RuntimeError(
            "cjson.decode: too many nested data structures".into(),
        ));
    }
    Ok(match v {
        serde_json::Value::Null => Value::NULL,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for (i, item) in items.iter().enumerate() {
                t.raw_set(i + 1, decode(lua, item, depth + 1)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, item) in map {
                t.raw_set(k.as_str(), decode(lua, item, depth + 1)?)?;
            }
            Value::Table(t)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        lua.globals().set("cjson", table(&lua).unwrap()).unwrap();
        lua
    }

    fn text(lua: &Lua, code: &str) -> String {
        lua.load(code).eval::<String>().unwrap()
    }

    #[test]
    fn encodes_as_lua_cjson_does() {
        let lua = lua();
        assert_eq!(
            text(&lua, "return cjson.encode({1, 2.5, 'a/b', true})"),
            r#"[1,2.5,"a\/b",true]"#
        );
        assert_eq!(text(&lua, "return cjson.encode({})"), "{}");
        assert_eq!(
            text(&lua, "return cjson.encode({x = {y = cjson.null}})"),
            r#"{"x":{"y":null}}"#
        );
        assert_eq!(
            text(&lua, "return cjson.encode({[1] = 'a', [3] = 'c'})"),
            r#"["a",null,"c"]"#
        );
        assert_eq!(
            text(&lua, "return cjson.encode('q\"\\n\\1')"),
            r#""q\"\n\u0001""#
        );
        assert_eq!(
            text(&lua, "return cjson.encode({[2.0] = 'x', [1] = 'w'})"),
            r#"["w","x"]"#
        );
        let e = lua
            .load("return cjson.encode({[100] = 1})")
            .eval::<String>()
            .unwrap_err();
        assert!(e.to_string().contains("excessively sparse"), "{e}");
        let e = lua
            .load("return cjson.encode(print)")
            .eval::<String>()
            .unwrap_err();
        assert!(e.to_string().contains("type not supported"), "{e}");
        let e = lua
            .load("local t = {} ; t[1] = t ; return cjson.encode(t)")
            .eval::<String>()
            .unwrap_err();
        assert!(e.to_string().contains("excessive nesting"), "{e}");
    }

    #[test]
    fn decodes_and_round_trips() {
        let lua = lua();
        let code = r#"local v = cjson.decode('{"a":[1,2,{"b":null}],"c":"d","e":1.5,"f":false}')
            return {v.a[1], v.a[2], v.a[3].b == cjson.null and 'null' or 'other', v.c, v.e * 2,
                    v.f == false and 'false' or 'other'}"#;
        let got: Vec<Value> = lua.load(code).eval().unwrap();
        let got: Vec<String> = got.iter().map(|v| v.to_string().unwrap()).collect();
        assert_eq!(got, ["1", "2", "null", "d", "3", "false"]);
        assert_eq!(
            text(
                &lua,
                r#"return cjson.encode(cjson.decode('{"k":[true,"x"]}'))"#
            ),
            r#"{"k":[true,"x"]}"#
        );
        let e = lua
            .load("return cjson.decode('{nope')")
            .eval::<Value>()
            .unwrap_err();
        assert!(e.to_string().contains("cjson.decode"), "{e}");
    }
}
