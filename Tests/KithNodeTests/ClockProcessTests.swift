import Foundation
import KithJSON
import KithProfile
import Testing

/// libfaketime (Debian's `faketime` package), preloaded into one node: its wall clock is read
/// from a file on every call, so a test can set it wrong and then right while the node runs.
/// The monotonic clock is left alone, as an NTP step leaves it.
struct SkewedClock {
    /// Where Debian's `faketime` package puts the library (`make deps` installs it).
    static let library =
        ["x86_64-linux-gnu", "aarch64-linux-gnu"].map { "/usr/lib/\($0)/faketime/libfaketime.so.1" }
        .first { FileManager.default.fileExists(atPath: $0) } ?? "libfaketime.so.1 (install Debian's faketime package: make deps)"
    let file: String

    init(directory: String, offset: String) throws {
        file = directory + "/faketime-\(UUID().uuidString)"
        try set(offset)
    }

    func set(_ offset: String) throws { try Data(offset.utf8).write(to: URL(fileURLWithPath: file)) }

    var environment: [String: String] {
        ["LD_PRELOAD": Self.library, "FAKETIME_TIMESTAMP_FILE": file, "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"]
    }
}

private func track(_ user: String, _ id: String, at time: String) -> String {
    #"{"userId":"\#(user)","event":"Visit","messageId":"\#(id)","timestamp":"\#(time)"}"#
}

private func iso(_ date: Date) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: date)
}

private let erase = ["Authorization: Bearer pk"]

@Suite("Clocks, as real processes", .serialized)
struct ClockProcessTests {
    /// The first loss of issue 28: a track dated a year ahead, then an erasure, then messages
    /// dated now. The erasure's boundary used to be the year-ahead time, and every later message
    /// was dropped on every node. Now each node holds every message acknowledged after it.
    @Test func aFutureDatedEventDoesNotSwallowWritesAfterAnErasure() throws {
        let cluster = try ClusterFixture()
        let nodes = try cluster.startAll(3)
        #expect(try eventually(5) { try nodes.allSatisfy { try $0.request("GET", "/readyz")?.status == 200 } })
        let aYearAhead = iso(Date().addingTimeInterval(365 * 86_400))
        #expect(try nodes[0].ingest("/v1/track", track("u-future", "ahead", at: aYearAhead)) == 200)
        // Ordered at its receipt, and the client's own timestamp shown beside it.
        let read = try nodes[0].profile("user_id:u-future")
        let event = try read.map { try JSONParser.parse(Array($0.body.utf8))["events"]?.arrayValue?.first } ?? nil
        #expect(event?["clientTimestamp"]?.stringValue.flatMap(ISO8601.parseMillis) == ISO8601.parseMillis(aYearAhead))
        #expect(event?["timestamp"]?.stringValue.flatMap(ISO8601.parseMillis).map { $0 < ISO8601.parseMillis(aYearAhead)! - 86_400_000 } == true)
        let erased = try nodes[0].request("DELETE", "/v1/profiles/user_id:u-future", headers: erase)
        #expect(erased?.status == 200, "\(erased?.body ?? "no answer")")
        var acknowledged = 0
        for index in 0..<12 {
            let status = try nodes[index % 3].ingest("/v1/track", track("u-future", "after-\(index)", at: iso(Date())))
            if status == 200 { acknowledged += 1 }
        }
        #expect(acknowledged == 12)
        for node in nodes {
            let held = try eventually(15) { try messageCount(node, "u-future") == 12 }
            let count = try messageCount(node, "u-future")
            #expect(held, "a node holds \(count) of the 12 messages acknowledged after the erasure")
        }
    }

    /// The second loss: an erasure made on a node whose clock is two hours fast took its clock as
    /// the boundary and swallowed everything written at the other nodes for two hours. Now that
    /// node measures its offset, refuses writes and erasures and says why, and serves again once
    /// its clock is set right; writes after an erasure elsewhere are all held.
    @Test func aNodeWithAFastClockIsRefusedUntilSetRight() throws {
        let cluster = try ClusterFixture()
        let first = try cluster.start("n1")
        let second = try cluster.start("n2", seeds: [first.gossipAddress!])
        let fastClock = try SkewedClock(directory: cluster.directory, offset: "+2h")
        let fast = try cluster.start("n3", seeds: [first.gossipAddress!], extraEnvironment: fastClock.environment)
        let nodes = [first, second, fast]

        // It says why, on /readyz, on ingest (Segment's error shape) and on erasure.
        #expect(try eventually(10) { try fast.request("GET", "/readyz")?.body.contains("clock_offset") == true })
        let refused = try fast.request(
            "POST", "/v1/track", body: Array(track("u-clock", "fast-1", at: iso(Date())).utf8),
            headers: ["Authorization: Basic d2s6", "Content-Type: application/json"])
        #expect(refused?.status == 503)
        let body = try JSONParser.parse(Array((refused?.body ?? "").utf8))
        #expect(body["code"] == "clock_offset")
        guard case .number(let reported)? = body["offsetMillis"], let offset = Int(reported.literal) else {
            Issue.record("no offsetMillis in \(refused?.body ?? "")")
            return
        }
        #expect(abs(offset - 7_200_000) < 5_000, "offset \(offset)")
        #expect(try fast.request("DELETE", "/v1/profiles/user_id:u-clock", headers: erase)?.status == 503)
        #expect(try eventually(5) { try first.request("GET", "/readyz")?.status == 200 && second.request("GET", "/readyz")?.status == 200 })
        // n1 measures n3 from its own round trips, and publishes each tick: it may lag n3's own verdict.
        #expect(
            try eventually(5) {
                try first.request("GET", "/metrics", headers: ["Authorization: Bearer tk"])?.body.contains("kith_peer_clock_offset_ms{peer=\"n3\"} 7")
                    == true
            })

        // An erasure on a node within the bound; every write after it is held everywhere,
        // the fast node included (it still replicates; it only refuses to date data).
        #expect(try first.ingest("/v1/track", track("u-clock", "before", at: iso(Date().addingTimeInterval(-60)))) == 200)
        #expect(try first.request("DELETE", "/v1/profiles/user_id:u-clock", headers: erase)?.status == 200)
        for index in 0..<10 {
            #expect(try nodes[index % 2].ingest("/v1/track", track("u-clock", "after-\(index)", at: iso(Date()))) == 200)
        }
        for node in nodes {
            let held = try eventually(15) { try messageCount(node, "u-clock") == 10 }
            let count = try messageCount(node, "u-clock")
            #expect(held, "\(count) of 10 held")
        }

        // Set right: the jump is noticed, the clock measured again, and writes accepted.
        try fastClock.set("+0")
        #expect(try eventually(15) { try fast.request("GET", "/readyz")?.status == 200 })
        #expect(try fast.ingest("/v1/track", track("u-clock", "fixed", at: iso(Date()))) == 200)
        #expect(try eventually(15) { try messageCount(first, "u-clock") == 11 })
        #expect(fast.logs.contains("offset_too_large"), "the refusal is in the node's log")
    }
}
