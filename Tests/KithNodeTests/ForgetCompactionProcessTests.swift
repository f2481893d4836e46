import Foundation
import KithJSON
import Testing

/// Forget compaction end to end, as real processes. Every node's wall clock comes from one
/// libfaketime file (`SkewedClock`), so the test can move the whole cluster three days on: the
/// erasure is then older than the horizon (`maxEventAge` 1 min, window 3 s, the clock bound and a
/// day of margin), the cores drop its forget record, and an edge that was away past the window
/// is quarantined on its return.
@Suite("Forget compaction, as real processes", .serialized)
struct ForgetCompactionProcessTests {
    static let admin = ["Authorization: Bearer tk"]

    /// The cores drop the record of an erasure once both hold it and its horizon passes; the
    /// edge, cut off past the window and holding a message about the erased customer dated
    /// before the erasure, clears on its return, and the message never comes back anywhere,
    /// while what it took after the erasure and what the cores hold reach it.
    @Test func anEdgeBackPastTheWindowIsQuarantinedAndNothingErasedReturns() throws {
        try runQuarantine(scoped: false)
    }

    /// The same with a scoped kiosk (holding the customers it sees) in the edge's place: it is
    /// told of its quarantine in the answer to its sync, clears, says so in its next one, and the
    /// cores read its log again.
    @Test func aScopedSiteBackPastTheWindowIsQuarantinedThroughItsSync() throws {
        try runQuarantine(scoped: true)
    }

    private func runQuarantine(scoped: Bool) throws {
        let cluster = try ClusterFixture()
        let clock = try SkewedClock(directory: cluster.directory, offset: "+0")
        let settings = [
            "KITH_MAX_OFFLINE_WINDOW": "3s", "KITH_MAX_EVENT_AGE": "1m", "KITH_LOG_TRUNCATION_INTERVAL": "1",
            "KITH_FORGET_COMPACTION_INTERVAL": "1",
        ].merging(clock.environment) { $1 }
        let (core, other, edge): (NodeProcess, NodeProcess, NodeProcess)
        if scoped {
            core = try cluster.start("core-1", extraEnvironment: settings)
            other = try cluster.start("core-2", seeds: [core.gossipAddress!], extraEnvironment: settings)
            let config = cluster.directory + "/kiosk.json"
            let site = #"{"site":{"purposes":["support"],"scope":[{"seenWithinDays":30}]}}"#
            #expect(FileManager.default.createFile(atPath: config, contents: Data(site.utf8)))
            edge = try cluster.start(
                "kiosk-1", role: "edge", seeds: [core.gossipAddress!], extraEnvironment: settings, extraArguments: ["--config", config])
        } else {
            (core, other, edge) = try cluster.startCoresAndEdge(extraEnvironment: settings)
        }
        #expect(try edge.ingest("/v1/identify", #"{"userId":"u-y","traits":{"plan":"gold"},"messageId":"y-1"}"#) == 200)
        #expect(try eventually(10) { try messageCount(core, "u-y") == 1 && messageCount(other, "u-y") == 1 })

        // The edge comes back cut off (a seed nobody answers) and takes a message about u-y.
        edge.stop()
        edge.arguments = edge.arguments.map { $0 == core.gossipAddress! ? "127.0.0.1:1" : $0 }
        try edge.start()
        #expect(try edge.ingest("/v1/track", #"{"userId":"u-y","event":"Visit","messageId":"y-2"}"#) == 200)
        Thread.sleep(forTimeInterval: 0.2)
        // The core erases u-y after that message was dated: the erasure dominates it.
        let erased = try core.request("DELETE", "/v1/profiles/user_id:u-y", headers: ["Authorization: Bearer pk"])
        #expect(erased?.status == 200, "\(erased?.body ?? "no answer")")
        #expect(try core.ingest("/v1/identify", #"{"userId":"u-keep","messageId":"k-1"}"#) == 200)

        // Silent past the window, then the cluster's clocks three days on.
        Thread.sleep(forTimeInterval: 4)
        try clock.set("+3d")
        let compacted = try eventually(30) {
            try [core, other].allSatisfy { node in try (node.metric("kith_forget_records_compacted_total") ?? 0) >= 1 }
        }
        let counts = try [core, other].map { try $0.metric("kith_forget_records_compacted_total") ?? 0 }
        #expect(compacted, "forget records compacted: \(counts)")
        #expect(try [core, other].allSatisfy { try messageCount($0, "u-y") == 0 })

        // Back: the edge is refused until it clears, then resynced.
        // (Retried: a node whose wall clock jumped measures it again before it takes writes.)
        #expect(try eventually(15) { try edge.ingest("/v1/identify", #"{"userId":"u-new","messageId":"n-1"}"#) == 200 })
        let join = try edge.request("POST", "/v1/admin/join", body: Array(#"{"address":"\#(core.gossipAddress!)"}"#.utf8), headers: Self.admin)
        #expect(join?.status == 202)
        let nodes = [core, other, edge]
        let converged = try eventually(40) {
            try nodes.allSatisfy { node in
                try messageCount(node, "u-y") == 0 && messageCount(node, "u-keep") == 1 && messageCount(node, "u-new") == 1
            }
        }
        let held = try nodes.map { node in try ["u-y", "u-keep", "u-new"].map { try messageCount(node, $0) } }
        #expect(converged, "\(held)")
        let status = try JSONParser.parse(Array((try edge.request("GET", "/v1/admin/sync", headers: Self.admin)?.body ?? "").utf8))
        #expect(status["forgetSet"]?["clearedThrough"] != nil, "\(status["forgetSet"] ?? .null)")
        if scoped {
            // The kiosk holds the customer it took a message about after its return, itself.
            let read = try edge.profile("user_id:u-new")
            #expect(read?.status == 200 && read?.headers["kith-served-by"] == nil, "\(String(describing: read))")
        }
        #expect(try [core, other].contains { try ($0.metric("kith_quarantined_messages_refused_total") ?? 0) >= 1 })
        // Some time later still nothing erased has come back.
        Thread.sleep(forTimeInterval: 2)
        #expect(try nodes.allSatisfy { try messageCount($0, "u-y") == 0 })
    }
}
