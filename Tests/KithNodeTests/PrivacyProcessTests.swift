import Foundation
import KithCrypto
import KithJSON
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
    static let canaries = ["ana.canary@example.com", "+44 7700 900123", "1984-05-02", "Canary Lane 7", "teal-canary"]
    static let identify = #"""
        {"userId":"u-priv","messageId":"p-1","timestamp":"2026-01-01T00:00:00Z",
         "traits":{"email":"ana.canary@example.com","phone":"+44 7700 900123","birthday":"1984-05-02","address":"Canary Lane 7",
                   "plan":"gold","favouriteColour":"teal-canary"},
         "context":{"consent":{"categoryPreferences":{"analytics":true,"advertising":false}}}}
        """#

    func startNode() throws -> NodeProcess {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kith-privacy-\(UUID().uuidString)").path
        let config = try privacyConfiguration(directory: directory)
        return try NodeProcess(dataDirectory: directory, environment: ["KITH_LOG_REQUESTS": "1"], arguments: ["--config", config])
    }

    @Test func purposesConsentAndMaskingDecideWhatEachReaderSees() throws {
        let node = try startNode()
        #expect(try node.ingest("/v1/identify", Self.identify) == 200)
        let path = "/v1/profiles/user_id:u-priv"

        // Analytics (its only purpose, implied): contact masked, demographic shown, unknown
        // fields (sensitive) withheld with a reason and without their value.
        let analytics = try node.call("GET", path, token: "bi")
        #expect(analytics.status == 200)
        let json = try JSONParser.parse(Array(analytics.body.utf8))
        #expect(json["traits"]?["email"]?.stringValue == "a***@example.com")
        #expect(json["traits"]?["phone"]?.stringValue == "+** **** ****23")
        #expect(json["traits"]?["birthday"]?.stringValue == "1984-05-02")
        #expect(json["traits"]?["favouriteColour"] == nil)
        #expect(analytics.body.contains(#"{"field":"traits.favouriteColour","reason":"purpose_excludes_category","category":"sensitive"}"#))
        for canary in ["ana.canary@example.com", "+44 7700 900123", "teal-canary"] {
            #expect(!analytics.body.contains(canary) && !analytics.headers.values.contains { $0.contains(canary) })
        }
        let etag = try #require(analytics.headers["etag"])
        let again = try #require(try node.request("GET", path, headers: ["Authorization: Bearer bi", "If-None-Match: \(etag)"]))
        #expect(again.status == 304 && again.body.isEmpty)

        // Advertising, denied by the customer: nothing but the reasons.
        let advertising = try node.call("GET", path, token: "ads")
        #expect(advertising.status == 200)
        for canary in Self.canaries + ["gold"] {
            #expect(!advertising.body.contains(canary), "\(canary) leaked to a denied purpose")
            #expect(!advertising.headers.values.contains { $0.contains(canary) })
        }
        #expect(advertising.body.contains(#""reason":"consent_denied""#) && advertising.body.contains(#""consentCategory":"advertising""#))

        // Principals and purposes.
        #expect(try node.call("GET", path, token: "crm").status == 400, "two purposes: one must be named")
        #expect(try node.call("GET", path + "?purpose=analytics", token: "crm").status == 403)
        #expect(try node.call("GET", path + "?purpose=lunch", token: "crm").body.contains("unknown_purpose"))
        #expect(try node.call("GET", path + "?purpose=support", token: "crm").body.contains("ana.canary@example.com"))
        #expect(try node.call("GET", path, token: "pipe").status == 403, "an ingest token does not read")
        #expect(try node.call("GET", path, token: "nobody").status == 401)
        #expect(try node.request("GET", "/v1/admin/status")?.status == 401)
        #expect(try node.request("GET", "/healthz")?.status == 200, "health needs no credential")

        // Consent set through the API (privacy role only) changes what advertising sees.
        let consent = #"{"categoryPreferences":{"advertising":true},"source":"preference-centre"}"#
        #expect(try node.call("PUT", path + "/consent", token: "bi", body: consent).status == 403)
        #expect(try node.call("PUT", path + "/consent", token: "dpo", body: #"{"categoryPreferences":{"kith:processing":true}}"#).status == 400)
        #expect(try node.call("PUT", path + "/consent", token: "dpo", body: consent).status == 200)
        let state = try node.call("GET", path + "/consent", token: "bi")
        #expect(state.body.contains(#""advertising":{"status":"granted""#) && state.body.contains("preference-centre"))
        #expect(state.body.contains(#""ad_user_data""#), "the consent categories' Google Consent Mode types")
        let granted = try JSONParser.parse(Array(try node.call("GET", path, token: "ads").body.utf8))
        #expect(granted["traits"]?["email"]?.stringValue == "a***@example.com")
        #expect(granted["traits"]?["plan"]?.stringValue == "gold")

        // Restriction: withheld from every purpose, except for the privacy role.
        #expect(try node.call("POST", path + "/restrict", token: "bi").status == 403)
        #expect(try node.call("POST", path + "/restrict", token: "dpo").status == 200)
        let restricted = try node.call("GET", path, token: "bi")
        #expect(restricted.body.contains(#""reason":"restricted""#) && !restricted.body.contains("gold"))
        #expect(try node.call("GET", path, token: "dpo").body.contains("ana.canary@example.com"))
        #expect(try node.call("DELETE", path + "/restrict", token: "dpo").status == 200)
        #expect(try node.call("GET", path, token: "bi").body.contains("gold"))

        // The audit says who read what for which purpose, and never a value.
        let audit = try node.call("GET", path + "/audit", token: "dpo")
        #expect(audit.status == 200)
        #expect(audit.body.contains(#""principal":"bi","purpose":"analytics""#))
        #expect(audit.body.contains(#""principal":"ads","purpose":"advertising""#))
        #expect(audit.body.contains(#""reason":"restricted""#))
        for canary in Self.canaries { #expect(!audit.body.contains(canary)) }
        #expect(try node.call("GET", path + "/audit", token: "bi").status == 403)
        let cli = try runKith(["audit", "--profile", "user_id:u-priv", "--host", "127.0.0.1:\(node.port)", "--token", "dpo", "--format", "json"])
        #expect(cli.status == 0 && cli.output.contains(#""principal":"bi""#), "\(cli.error)")

        // Export: everything, with consent history and the reads.
        let export = try node.call("GET", path + "/export", token: "dpo")
        #expect(export.status == 200)
        for canary in Self.canaries { #expect(export.body.contains(canary)) }
        #expect(export.body.contains(#""principal":"ads""#))
        // The history holds every decision, oldest first: the message's context, the PUT, the
        // restriction and its lifting (each with its source), not only the latest per category.
        let exportJSON = try JSONParser.parse(Array(export.body.utf8))
        let history = try #require(exportJSON["consentHistory"]?.arrayValue)
        let decisions = history.map { change in
            (change["decisions"]?.objectValue?.members.map { "\($0.key)=\($0.value == .bool(true))" } ?? []).joined(separator: ",")
        }
        #expect(
            decisions == ["advertising=false,analytics=true", "advertising=true", "kith:processing=false", "kith:processing=true"], "\(decisions)")
        #expect(history[0]["messageId"]?.stringValue == "p-1" && history[0]["identifier"]?.stringValue == "user_id:u-priv")
        #expect(history[1]["source"]?.stringValue == "preference-centre")
        let exported = try runKith(["export-subject", "user_id:u-priv", "--host", "127.0.0.1:\(node.port)", "--token", "dpo"])
        #expect(exported.status == 0 && exported.output.contains("teal-canary"))

        // No personal data in the node's logs, though it logged every request.
        let logs = node.logs
        #expect(logs.contains(#""http.route":"/v1/profiles/{identifier}""#))
        for canary in Self.canaries + ["u-priv"] { #expect(!logs.contains(canary), "\(canary) is in the logs") }
    }

    @Test func erasureDropsLateArrivalsAndNewerDataStartsAfresh() throws {
        let node = try startNode()
        #expect(try node.ingest("/v1/identify", Self.identify) == 200)
        let host = ["--host", "127.0.0.1:\(node.port)"]
        #expect(try runKith(["erase", "user_id:u-priv", "--token", "bi", "--yes"] + host).status == 1, "erasure needs the privacy role")
        #expect(try runKith(["erase", "user_id:u-priv", "--token", "dpo"] + host).status == 64, "no terminal, no --yes: refused")
        let erased = try runKith(["erase", "user_id:u-priv", "--token", "dpo", "--yes", "--format", "json"] + host)
        #expect(erased.status == 0 && erased.output.contains(#""erased":true"#))
        #expect(try node.profile("user_id:u-priv")?.status == 404)

        // A retry of an old message (an edge site that was offline) is dropped.
        #expect(try node.ingest("/v1/identify", Self.identify.replacingOccurrences(of: "p-1", with: "p-retry")) == 200)
        #expect(try node.profile("user_id:u-priv")?.status == 404)
        // Newer data starts a new profile, with nothing of the old one.
        #expect(try node.ingest("/v1/identify", #"{"userId":"u-priv","messageId":"p-new","traits":{"plan":"new"}}"#) == 200)
        let fresh = try #require(try node.profile("user_id:u-priv"))
        #expect(fresh.status == 200 && fresh.body.contains(#""plan":"new""#))
        for canary in Self.canaries { #expect(!fresh.body.contains(canary)) }

        // The audit still answers for the identifier, by its keyed hash.
        #expect(try node.call("GET", "/v1/profiles/user_id:u-priv/audit", token: "dpo").status == 200)
        // Erasing an identifier this node has never seen is remembered all the same.
        #expect(try node.call("DELETE", "/v1/profiles/user_id:never-seen", token: "dpo").status == 200)
        #expect(
            try node.ingest("/v1/identify", #"{"userId":"never-seen","messageId":"late","timestamp":"2026-01-01T00:00:00Z","traits":{"a":1}}"#) == 200
        )
        #expect(try node.profile("user_id:never-seen")?.status == 404)
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
