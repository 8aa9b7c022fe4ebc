"""Runs the same redis-py calls against a Redis server and a flotilla node,
in RESP2 and in RESP3, and prints every result that differs (exit status 1
if any does). Both servers are flushed first.

    pip install redis          # redis-py 8 speaks RESP3 unless told otherwise
    redis-server --port 6390 --save "" &
    cargo run --release -- local &
    python3 tests/compat/redis_py_compare.py 6390 6381
"""
import sys
import time

import redis

REDIS_PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 6390
FLOTILLA_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 6381

def run(port, proto):
    r = redis.Redis(port=port, protocol=proto, decode_responses=True)
    r.flushall()
    out = []
    def c(name, f):
        try:
            v = f()
        except Exception as e:
            v = "EXC " + type(e).__name__ + ": " + str(e)[:80]
        out.append((name, v))
    c("set", lambda: r.set("s", "1"))
    c("get", lambda: r.get("s"))
    c("get none", lambda: r.get("nope"))
    c("incrbyfloat", lambda: r.incrbyfloat("f", 1.5))
    c("mget", lambda: r.mget("s", "nope"))
    c("hset", lambda: r.hset("h", mapping={"a": "1", "b": "2"}))
    c("hgetall", lambda: r.hgetall("h"))
    c("hgetall empty", lambda: r.hgetall("nope"))
    c("hmget", lambda: r.hmget("h", "a", "x"))
    c("hrandfield", lambda: sorted(map(str, r.hrandfield("h", 2, withvalues=True))))
    c("sadd", lambda: r.sadd("st", "x", "y"))
    c("smembers", lambda: r.smembers("st"))
    c("sinter", lambda: r.sinter("st", "st"))
    c("spop2", lambda: sorted(r.spop("st", 2)))
    c("zadd", lambda: r.zadd("z", {"a": 1.5, "b": 2}))
    c("zscore", lambda: r.zscore("z", "a"))
    c("zscore none", lambda: r.zscore("z", "x"))
    c("zrange ws", lambda: r.zrange("z", 0, -1, withscores=True))
    c("zrangebyscore ws", lambda: r.zrangebyscore("z", 0, 10, withscores=True))
    c("zrevrange ws", lambda: r.zrevrange("z", 0, -1, withscores=True))
    c("zincrby", lambda: r.zincrby("z", 1, "a"))
    c("zadd incr", lambda: r.zadd("z", {"a": 1}, incr=True))
    c("zadd incr nx", lambda: r.zadd("z", {"a": 1}, incr=True, nx=True))
    c("zmscore", lambda: r.zmscore("z", ["a", "x"]))
    c("zrank", lambda: r.zrank("z", "a"))
    c("zpopmin", lambda: r.zpopmin("z"))
    c("zadd2", lambda: r.zadd("z", {"c": 3, "d": 4, "e": 5}))
    c("zpopmax 2", lambda: r.zpopmax("z", 2))
    c("bzpopmin", lambda: r.bzpopmin("z", 1))
    c("zrandmember ws", lambda: r.zrandmember("z", 1, withscores=True))
    c("zunion ws", lambda: r.zunion(["z"], withscores=True))
    c("zinter ws", lambda: r.zinter(["z"], withscores=True))
    c("zdiff ws", lambda: r.zdiff(["z"], withscores=True))
    c("zscan", lambda: r.zscan("z"))
    c("rpush", lambda: r.rpush("l", "1", "2", "3"))
    c("lrange", lambda: r.lrange("l", 0, -1))
    c("lpop count", lambda: r.lpop("l", 2))
    c("lpop none", lambda: r.lpop("nolist", 2))
    c("blpop", lambda: r.blpop(["l"], 1))
    c("blpop timeout", lambda: r.blpop(["l"], 0.1))
    c("expire", lambda: r.expire("s", 100))
    c("ttl", lambda: r.ttl("s"))
    c("type", lambda: r.type("h"))
    c("exists", lambda: r.exists("h", "nope"))
    c("hscan", lambda: r.hscan("h"))
    c("pipeline", lambda: (lambda p: (p.set("{t}p1", "a"), p.incr("{t}cnt"), p.get("{t}p1"), p.execute())[-1])(r.pipeline()))
    def tx():
        with r.pipeline() as t:
            r.hset("{t}h", mapping={"a": "1"})
            t.watch("{t}cnt"); t.multi(); t.incr("{t}cnt"); t.hgetall("{t}h"); t.zscore("{t}z", "m")
            return t.execute()
    c("multi", tx)
    c("xadd", lambda: r.xadd("x", {"f": "v"}, id="1-0"))
    c("xadd2", lambda: r.xadd("x", {"g": "w"}, id="2-0"))
    c("xrange", lambda: r.xrange("x"))
    c("xrange count 0", lambda: r.xrange("x", count=0))
    c("xrevrange count 0 no key", lambda: r.xrevrange("nostream", count=0))
    c("xrevrange", lambda: r.xrevrange("x", count=1))
    c("xread", lambda: r.xread({"x": "0"}, count=1))
    c("xread none", lambda: r.xread({"x": "2-0"}))
    c("xread block", lambda: r.xread({"x": "$"}, block=100))
    c("config", lambda: r.config_get("maxmemory"))
    c("pfadd", lambda: r.pfadd("hll", "a", "b"))
    c("pfcount", lambda: r.pfcount("hll"))
    c("getex", lambda: r.getex("{t}p1", persist=True))
    c("object", lambda: r.object("encoding", "{t}p1"))
    c("ping", lambda: r.ping())
    c("echo", lambda: r.echo("x"))
    c("sort", lambda: r.sort("st2", alpha=True))
    c("lcs", lambda: (r.set("{a}1", "ohmytext"), r.set("{a}2", "mynewtext"), r.lcs("{a}1", "{a}2"))[-1])
    c("lcs idx", lambda: r.lcs("{a}1", "{a}2", idx=True))
    c("publish", lambda: r.publish("ch", "m"))
    c("pubsub numsub", lambda: r.pubsub_numsub("ch"))
    c("pubsub numpat", lambda: r.pubsub_numpat())
    c("hincrbyfloat", lambda: r.hincrbyfloat("h", "a", 0.5))
    c("srandmember", lambda: r.srandmember("st2"))
    c("smismember", lambda: r.smismember("st", ["x", "q"]))
    c("getdel", lambda: r.getdel("nope"))
    c("lpos", lambda: r.lpos("l", "3"))
    c("touch", lambda: r.touch("h"))
    c("dbsize>0", lambda: r.dbsize() > 0)
    c("randomkey", lambda: r.randomkey() is not None)
    c("copy", lambda: r.copy("{c}a", "{c}b"))
    c("setrange", lambda: r.setrange("sr", 2, "x"))
    c("getrange", lambda: r.getrange("sr", 0, -1))
    c("bitcount", lambda: r.bitcount("sr"))
    c("setbit", lambda: r.setbit("bits", 7, 1))
    c("msetnx", lambda: r.msetnx({"{m}a": "1", "{m}b": "2"}))
    c("rename", lambda: r.rename("{m}a", "{m}c"))
    c("zrangestore", lambda: r.zrangestore("{z}d", "{z}s", 0, -1))
    c("zcount", lambda: r.zcount("z", "-inf", "+inf"))
    c("zlexcount", lambda: r.zlexcount("z", "-", "+"))
    c("zrem", lambda: r.zrem("z", "e"))
    c("scan", lambda: sorted(r.scan_iter(match="h*")))
    c("lmpop", lambda: (r.rpush("{q}l", "1", "2", "3"), r.lmpop(2, "{q}n", "{q}l", direction="LEFT", count=2))[-1])
    c("lmpop none", lambda: r.lmpop(1, "{q}n", direction="RIGHT"))
    c("zmpop", lambda: (r.zadd("{q}z", {"a": 1, "b": 2.5}), r.zmpop(1, ["{q}z"], max=True))[-1])
    c("zmpop count", lambda: r.zmpop(1, ["{q}z"], min=True, count=5))
    c("bzmpop timeout", lambda: r.bzmpop(0.1, 1, ["{q}nz"], min=True))
    c("blmpop", lambda: r.blmpop(1, 1, "{q}l", direction="RIGHT", count=5))
    return out
def run_pubsub(port, proto):
    out = []
    r = redis.Redis(port=port, protocol=proto)
    p = r.pubsub()
    p.subscribe("a", "b"); p.psubscribe("x*")
    for _ in range(3): out.append(p.get_message(timeout=1))
    for ch, m in (("a", "1"), ("xy", "2"), ("b", "3")):
        out.append(("publish", r.publish(ch, m)))
    time.sleep(0.2)
    while True:
        m = p.get_message(timeout=0.5)
        if m is None: break
        out.append(m)
    p.ping("hi"); out.append(p.get_message(timeout=1))
    p.unsubscribe(); p.punsubscribe()
    # Without arguments, UNSUBSCRIBE goes through the channels in the
    # server's own order (Redis: its dict's, seeded per process): compare
    # which ones, and the counts in order.
    msgs = [p.get_message(timeout=1) for _ in range(3)]
    out.append(sorted((m["type"], m["channel"]) for m in msgs if m))
    out.append([m["data"] for m in msgs if m])
    out.append(("numpat", r.pubsub_numpat()))
    p.close()
    return out

def main():
    diffs = 0
    for proto in (2, 3):
        for name, f in (("commands", run), ("pub/sub", run_pubsub)):
            a = f(REDIS_PORT, proto)
            b = f(FLOTILLA_PORT, proto)
            assert len(a) == len(b)
            for i, (x, y) in enumerate(zip(a, b)):
                if x != y:
                    diffs += 1
                    print("RESP%d %s #%d: redis=%r flotilla=%r" % (proto, name, i, x, y))
            print("RESP%d %s: %d results compared" % (proto, name, len(a)))
    print("differences:", diffs)
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
