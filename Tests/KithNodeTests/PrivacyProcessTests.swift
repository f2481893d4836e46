import Foundation
import KithCrypto
import KithJSON
import KithTestSupport
import Testing

/// A configuration file with one principal per role and purpose (tokens are their names).
func privacyConfiguration(directory: String) throws -> String {
    func token(_ name: String, _ role: String, _ purposes: [String]) -> String {
        let hash = Crypto.hex(Crypto.sha256(Array(name.utf8)))
        let list = purposes.map { "\"\($0)\"" }.joined(separator: ",")
        return #"{"name":"\#(name)","sha256":"\#(hash)","role":"\#(role)","purposes":[\#(list)]}"#
    }
    let tokens = [
        token("bi", "reader", ["analytics"]), token("ads", "reader", ["advertising"]), token("crm", "reader", ["support", "advertising"]),
        token("dpo", "privacy", ["support"]), token("pipe", "ingest", []),
    ]
    let path = directory + "-config.json"
    let text = #"{"tokens":[\#(tokens.joined(separator: ","))]}"#
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8)) else { throw NodeStartFailed() }
    return path
}

extension NodeProcess {
    func call(_ method: String, _ path: String, token: String, body: String = "") throws -> (status: Int, headers: [String: String], body: String) {
        try #require(
            try request(method, path, body: Array(body.utf8), headers: ["Authorization: Bearer \(token)", "Content-Type: application/json"]))
    }
}

@Suite("consent and privacy at read time, as real processes", .serialized)
struct PrivacyProcessTests {
    static let canaries = PrivacyCanaries.values
    static let identify = PrivacyCanaries.identify

    func startNode() throws -> NodeProcess {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kith-privacy-\(UUID().uuidString)").path
        let config = try privacyConfiguration(directory: directory)
        return try NodeProcess(dataDirectory: directory, environment: ["KITH_LOG_REQUESTS": "1"], arguments: ["--config", config])
    }

    /// The privacy role's CLI against a live node — audit, subject export, erasure with its
    /// confirmation — and no personal data in the node's logs though it logs every request.
    /// (What each reader sees, consent, restriction and the export's contents are tested in
    /// process: KithAPITests, PrivacyReadTests.)
    @Test func thePrivacyCommandsAndTheLogs() throws {
        let node = try startNode()
        #expect(try node.ingest("/v1/identify", Self.identify) == 200)
        let path = "/v1/profiles/user_id:u-priv"
        #expect(try node.call("GET", path, token: "bi").status == 200)
        #expect(try node.call("GET", path, token: "ads").status == 200)
        let host = ["--host", "127.0.0.1:\(node.port)"]
        let cli = try runKith(["audit", "--profile", "user_id:u-priv", "--token", "dpo", "--format", "json"] + host)
        #expect(cli.status == 0 && cli.output.contains(#""principal":"bi""#), "\(cli.error)")
        let exported = try runKith(["export-subject", "user_id:u-priv", "--token", "dpo"] + host)
        #expect(exported.status == 0 && exported.output.contains("teal-canary"))

        #expect(try runKith(["erase", "user_id:u-priv", "--token", "bi", "--yes"] + host).status == 1, "erasure needs the privacy role")
        #expect(try runKith(["erase", "user_id:u-priv", "--token", "dpo"] + host).status == 64, "no terminal, no --yes: refused")
        let erased = try runKith(["erase", "user_id:u-priv", "--token", "dpo", "--yes", "--format", "json"] + host)
        #expect(erased.status == 0 && erased.output.contains(#""erased":true"#))
        #expect(try node.profile("user_id:u-priv")?.status == 404)

        let logs = node.logs
        #expect(logs.contains(#""http.route":"/v1/profiles/{identifier}""#))
        for canary in Self.canaries + ["u-priv"] { #expect(!logs.contains(canary), "\(canary) is in the logs") }
    }

    @Test func anEdgeOfflineDuringAnErasureCannotBringTheCustomerBack() throws {
        let cluster = try ClusterFixture()
        let core = try cluster.start("core-1")
        let edge = try cluster.start("edge-1", role: "edge", seeds: [core.gossipAddress!])
        #expect(try edge.ingest("/v1/identify", Self.identify) == 200)
        #expect(try eventually(10) { try core.profile("user_id:u-priv")?.status == 200 })
        #expect(try edge.profile("user_id:u-priv")?.status == 200, "a read on each node, for the cluster-wide audit")

        // The edge goes offline and keeps taking (old-dated) data about the customer.
        edge.stop()
        edge.arguments = edge.arguments.map { $0 == core.gossipAddress! ? "127.0.0.1:1" : $0 }
        #expect(try core.request("DELETE", "/v1/profiles/user_id:u-priv", headers: ["Authorization: Bearer tk"])?.status == 403)
        try edge.start()
        #expect(
            try edge.ingest("/v1/track", #"{"userId":"u-priv","event":"Offline Visit","messageId":"p-offline","timestamp":"2026-01-02T00:00:00Z"}"#)
                == 200)

        // Erased at the core (privacy token) while the edge is away.
        #expect(try runKith(["erase", "user_id:u-priv", "--host", "127.0.0.1:\(core.port)", "--token", "pk", "--yes"]).status == 0)
        #expect(try core.profile("user_id:u-priv")?.status == 404)

        // Reconnect: the erasure reaches the edge, and the edge's data does not come back.
        #expect(
            try edge.request(
                "POST", "/v1/admin/join", body: Array(#"{"address":"\#(core.gossipAddress!)"}"#.utf8), headers: ["Authorization: Bearer tk"])?.status
                == 202)
        #expect(try eventually(20) { try edge.profile("user_id:u-priv")?.status == 404 })
        Thread.sleep(forTimeInterval: 1.5)  // several pull rounds both ways
        #expect(try core.profile("user_id:u-priv")?.status == 404)
        #expect(try edge.profile("user_id:u-priv")?.status == 404)

        // The audit is gathered from every member, by the erased identifier's keyed hash.
        let audit = try runKith(["audit", "--profile", "user_id:u-priv", "--host", "127.0.0.1:\(core.port)", "--token", "pk", "--format", "json"])
        #expect(audit.status == 0, "\(audit.error)")
        #expect(audit.output.contains(#""node":"core-1""#) && audit.output.contains(#""node":"edge-1""#))
    }
}
