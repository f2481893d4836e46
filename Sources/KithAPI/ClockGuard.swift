import KithHTTP
import KithJSON
import KithReplication

/// Writes and erasures wait for a clock the cluster agrees with (docs/replication.md, "Clocks"):
/// every handler that dates data asks here first. The check is the replication thread's latest,
/// read without waiting on that thread.
extension NodeAPI {
    /// This node's clock check; nil for a node on its own (nobody to compare with).
    var clockCheck: ClockCheck? { replication?.clock.check }

    /// 503 while this node's clock may not date writes, naming the offset; nil when it may.
    /// `segment`: the ingest endpoints' error shape (`{"code","message"}`) instead of Kith's.
    func clockRefusal(segment: Bool = false) -> HTTPResponse? {
        guard let check = clockCheck, !check.allowsWrites else { return nil }
        var writer = JSONWriter()
        func members(_ o: inout JSONWriter.ObjectWriter) {
            o.member("code", string: check.verdict == .unmeasured ? "clock_unmeasured" : "clock_offset")
            o.member("message", string: check.explanation)
            if let offset = check.offset { o.member("offsetMillis", integer: offset) }
            o.member("maxOffsetMillis", integer: check.maximumOffset)
        }
        if segment {
            writer.writeObject { members(&$0) }
        } else {
            writer.writeObject { o in o.member("error") { $0.writeObject { members(&$0) } } }
        }
        var response = HTTPResponse.json(503, writer.bytes)
        response.headers.append(HTTPHeader("Retry-After", "1"))
        return response
    }
}
