//! `bit` for Lua scripts, as Redis' LuaBitOp 1.0: 32-bit operations on
//! numbers (`tobit`, `tohex`, `bnot`, `band`, `bor`, `bxor`, `lshift`,
//! `rshift`, `arshift`, `rol`, `ror`, `bswap`). Every argument is first
//! taken modulo 2^32 (rounded to an integer) and every result is a signed
//! 32-bit number, so `bit.tobit(0xffffffff) == -1`.

use mlua::{Lua, MultiValue, Table, Value};

/// `x` as LuaBitOp's `tobit` sees it.
fn tobit(x: f64) -> i32 {
    if !x.is_finite() {
        return 0;
    }
    x.round_ties_even().rem_euclid(4_294_967_296.0) as u32 as i32
}

fn number(v: &Value) -> mlua::Result<f64> {
    match v {
        Value::Integer(n) => Ok(*n as f64),
        Value::Number(n) => Ok(*n),
        Value::String(s) => s
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .ok_or_else(|| {
                mlua::Error::RuntimeError("bad argument to bit op (number expected)".into())
            }),
        other => Err(mlua::Error::RuntimeError(format!(
            "bad argument to bit op (number expected, got {})",
            other.type_name()
        ))),
    }
}

fn bits(args: &MultiValue) -> mlua::Result<Vec<i32>> {
    args.iter().map(|v| number(v).map(tobit)).collect()
}

/// The `bit` table.
pub fn table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let fold = |name: &str, f: fn(i32, i32) -> i32| -> mlua::Result<()> {
        t.raw_set(
            name,
            lua.create_function(move |_, args: MultiValue| {
                let b = bits(&args)?;
                let (first, rest) = b.split_first().ok_or_else(|| {
                    mlua::Error::RuntimeError("bad argument #1 to bit op (number expected)".into())
                })?;
                Ok(rest.iter().fold(*first, |a, x| f(a, *x)))
            })?,
        )
    };
    fold("band", |a, b| a & b)?;
    fold("bor", |a, b| a | b)?;
    fold("bxor", |a, b| a ^ b)?;
    let unary = |name: &str, f: fn(i32) -> i32| -> mlua::Result<()> {
        t.raw_set(
            name,
            lua.create_function(move |_, x: Value| Ok(f(tobit(number(&x)?))))?,
        )
    };
    unary("tobit", |x| x)?;
    unary("bnot", |x| !x)?;
    unary("bswap", i32::swap_bytes)?;
    let shift = |name: &str, f: fn(i32, u32) -> i32| -> mlua::Result<()> {
        t.raw_set(
            name,
            lua.create_function(move |_, (x, n): (Value, Value)| {
                Ok(f(tobit(number(&x)?), tobit(number(&n)?) as u32 & 31))
            })?,
        )
    };
    shift("lshift", |x, n| ((x as u32) << n) as i32)?;
    shift("rshift", |x, n| ((x as u32) >> n) as i32)?;
    shift("arshift", |x, n| x >> n)?;
    shift("rol", |x, n| (x as u32).rotate_left(n) as i32)?;
    shift("ror", |x, n| (x as u32).rotate_right(n) as i32)?;
    t.raw_set(
        "tohex",
        lua.create_function(|_, (x, n): (Value, Option<Value>)| {
            let x = tobit(number(&x)?) as u32;
            let n = match n {
                Some(n) => tobit(number(&n)?),
                None => 8,
            };
            let digits = n.unsigned_abs().min(8) as usize;
            let hex = if n < 0 {
                format!("{x:08X}")
            } else {
                format!("{x:08x}")
            };
            Ok(hex[8 - digits..].to_string())
        })?,
    )?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_follow_luabitop() {
        let lua = Lua::new();
        lua.globals().set("bit", table(&lua).unwrap()).unwrap();
        let ints = |code: &str| -> Vec<i64> { lua.load(code).eval().unwrap() };
        assert_eq!(
            ints("return {bit.tobit(0xffffffff), bit.tobit(2^32 + 5), bit.bnot(0), bit.band(12, 10, 8)}"),
            [-1, 5, -1, 8]
        );
        assert_eq!(
            ints(
                "return {bit.bor(1, 2, 4), bit.bxor(5, 3), bit.lshift(1, 31), bit.rshift(-1, 28)}"
            ),
            [7, 6, i64::from(i32::MIN), 15]
        );
        assert_eq!(
            ints("return {bit.arshift(-256, 4), bit.rol(0x12345678, 8), bit.ror(0x12345678, 8), bit.bswap(0x12345678)}"),
            [-16, 0x3456_7812, 0x7812_3456, 0x7856_3412]
        );
        assert_eq!(
            ints("return {bit.lshift(1, 33)}"),
            [2],
            "shift counts are taken mod 32"
        );
        let text = |code: &str| -> String { lua.load(code).eval().unwrap() };
        assert_eq!(text("return bit.tohex(255)"), "000000ff");
        assert_eq!(text("return bit.tohex(-1, -4)"), "FFFF");
        assert_eq!(text("return bit.tohex(0x1234, 2)"), "34");
        assert!(lua.load("return bit.band({})").eval::<i64>().is_err());
    }
}
