import Foundation
import KithCRDT
import KithJSON
import KithProfile
import KithStore
import KithStoreLMDB
import Testing

/// Issue 24 with real processes: two cores and a scoped kiosk (analytics, customers whose
/// `homeStore` is the kiosk). A canary trait of a customer outside its scope, and a canary field
/// its purpose may not see, never reach its data file, key file or logs; after a consent
/// withdrawal the customer it held is gone from its files; reads of customers it does not hold
/// go to a core, or are answered 503 when no core answers.
@Suite("Scoped sites, as real processes", .serialized)
struct ScopedSiteProcessTests {
    static let outCanary = "out-of-scope-canary"
    static let fieldCanary = "unseen-field-canary"
    static let emailCanary = "kiosk.canary@example.com"

    @Test func aKioskHoldsOnlyItsCustomersAndOnlyWhatItsPurposeSees() throws {
        let cluster = try ClusterFixture()
        let fast = ["KITH_LOG_TRUNCATION_INTERVAL": "1"]
        let core = try cluster.start("core-1", extraEnvironment: fast)
        let other = try cluster.start("core-2", seeds: [core.gossipAddress!], extraEnvironment: fast)
        let config = cluster.directory + "/kiosk.json"
        let site = #"{"site":{"purposes":["analytics"],"scope":[{"trait":"homeStore","equals":"home-kiosk"}]}}"#
        #expect(FileManager.default.createFile(atPath: config, contents: Data(site.utf8)))
        let kiosk = try cluster.start(
            "kiosk-1", role: "edge", seeds: [core.gossipAddress!], extraEnvironment: fast, extraArguments: ["--config", config])

        // One customer of the kiosk (with a field analytics may not see, and an email it sees
        // masked), one of another store; both written at a core.
        #expect(
            try core.ingest(
                "/v1/identify",
                #"{"userId":"u-in","messageId":"k-1","traits":{"homeStore":"home-kiosk","plan":"gold","email":"\#(Self.emailCanary)","favouriteColour":"\#(Self.fieldCanary)"},"context":{"consent":{"categoryPreferences":{"analytics":true}}}}"#
            ) == 200)
        #expect(
            try core.ingest(
                "/v1/identify",
                #"{"userId":"u-out","messageId":"k-2","traits":{"homeStore":"leeds-2","favouriteColour":"\#(Self.outCanary)"},"context":{"consent":{"categoryPreferences":{"analytics":true}}}}"#
            ) == 200)
        // The kiosk takes a visit of its customer, and a message about the other one (kept until
        // the cores hold it, then purged there).
        #expect(try kiosk.ingest("/v1/track", #"{"userId":"u-in","event":"Kiosk Visit","messageId":"k-3"}"#) == 200)
        #expect(try kiosk.ingest("/v1/track", #"{"userId":"u-out","event":"Kiosk Visit","messageId":"k-4"}"#) == 200)

        // Its customer is read there, from what it holds.
        #expect(
            try eventually(20) {
                guard let read = try kiosk.profile("user_id:u-in", purpose: "analytics"), read.status == 200 else { return false }
                return read.body.contains("gold") && read.headers["kith-served-by"] == nil
            }, "the kiosk never held its customer")
        #expect(
            try eventually(20) {
                try other.request("GET", "/v1/profiles/user_id:u-out/events?purpose=support", headers: ["Authorization: Bearer tk"])?.body
                    .contains("Kiosk Visit") ?? false
            }, "the message the kiosk took about another store's customer reached both cores")
        let held = try eventually(20) { try siteStatus(kiosk)?["customers"] == 1 && siteStatus(kiosk)?["documentsPurged"] != 0 }
        let afterSync = try siteStatus(kiosk)
        #expect(held, "\(String(describing: afterSync))")

        // Once the cores hold what it took about the other store's customer, it keeps none of
        // them: that customer is read at a core for it.
        let forwarded = try #require(try kiosk.profile("user_id:u-out", purpose: "support"))
        #expect(forwarded.status == 200 && forwarded.headers["kith-served-by"] == "core-1" && forwarded.body.contains(Self.outCanary))
        kiosk.stop()
        // (Its own `homeStore` is a field analytics may not see either: the scope is decided at
        // the core, on the whole profile.)
        try expectAbsent([Self.outCanary, Self.fieldCanary, Self.emailCanary, "leeds-2", "home-kiosk"], from: kiosk, present: ["gold"])
        try kiosk.start()

        // The customer withdraws analytics consent: the kiosk no longer holds them at all.
        #expect(
            try core.ingest(
                "/v1/identify", #"{"userId":"u-in","messageId":"k-5","context":{"consent":{"categoryPreferences":{"analytics":false}}}}"#) == 200)
        let left = try eventually(20) { try siteStatus(kiosk)?["customers"] == 0 }
        let afterWithdrawal = try siteStatus(kiosk)
        #expect(left, "\(String(describing: afterWithdrawal))")
        #expect(try kiosk.profile("user_id:u-in", purpose: "support")?.headers["kith-served-by"] == "core-1")
        kiosk.stop()
        try expectAbsent([Self.outCanary, Self.fieldCanary, Self.emailCanary, "home-kiosk", "gold", "Kiosk Visit"], from: kiosk, present: [])

        // With no core answering, a customer it does not hold is 503 not_held_here.
        core.stop()
        other.stop()
        try kiosk.start()
        let alone = try #require(try kiosk.profile("user_id:u-out", purpose: "support"))
        #expect(alone.status == 503 && alone.body.contains("not_held_here"))
    }

    /// The scoped kiosk of `cluster-configs/edge-site` passes `kith config check`, which says
    /// what it holds.
    @Test func theScopedKioskExampleChecks() throws {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let example = try String(contentsOf: repository.appendingPathComponent("cluster-configs/edge-site/kiosk-7.json"), encoding: .utf8)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kith-kiosk-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }  // a temporary folder; a leftover is harmless
        #expect(FileManager.default.createFile(atPath: directory + "/cluster.key", contents: Data("1 \(String(repeating: "0f", count: 32))\n".utf8)))
        let config = directory + "/kiosk-7.json"
        #expect(
            FileManager.default.createFile(
                atPath: config,
                contents: Data(example.replacingOccurrences(of: "./data/edge-site/cluster.key", with: directory + "/cluster.key").utf8)))
        let checked = try runKith(["config", "check", config])
        #expect(checked.status == 0, "\(checked.error)")
        #expect(checked.output.contains("scoped site for personalization: holds customers with homeStore = store-7, or seen here within 30 days"))
    }

    /// The `site` object of the node's sync status.
    func siteStatus(_ node: NodeProcess) throws -> JSONValue? {
        guard let answer = try node.request("GET", "/v1/admin/sync", headers: ["Authorization: Bearer tk"]), answer.status == 200 else { return nil }
        return try JSONParser.parse(answer.body)["site"]
    }

    /// None of `absent` anywhere in the stopped node's files (data file, key file, logs), raw or
    /// in any row of its store opened with its own key; every one of `present` in some row (so
    /// the scan sees what it should).
    func expectAbsent(_ absent: [String], from node: NodeProcess, present: [String]) throws {
        var files = [node.logPath, node.dataDirectory + ".keys"]
        files += try FileManager.default.contentsOfDirectory(atPath: node.dataDirectory).map { node.dataDirectory + "/" + $0 }
        for file in files {
            guard let bytes = FileManager.default.contents(atPath: file) else { continue }
            for canary in absent { #expect(bytes.range(of: Data(canary.utf8)) == nil, "\(canary) in \(file)") }
        }
        let secret = try #require(FileManager.default.contents(atPath: node.environment["KITH_SECRET_FILE"]!))
        let store = try LMDBProfileStore(
            path: node.dataDirectory, configuration: StoreConfiguration(node: 0, forgetKeySecret: Array(secret), replicates: true))
        var rows = Data()
        try store.read { reader in
            for table in Table.allCases {
                try reader.scan(table, prefix: []) { key, value in
                    rows.append(contentsOf: key)
                    rows.append(contentsOf: value)
                    return .next
                }
            }
        }
        for canary in absent { #expect(rows.range(of: Data(canary.utf8)) == nil, "\(canary) in a row of the store") }
        for wanted in present { #expect(rows.range(of: Data(wanted.utf8)) != nil, "\(wanted) in no row of the store") }
    }
}
