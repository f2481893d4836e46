import Foundation
import KithCRDT
import KithLMDB
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// Cluster settings: last-writer-wins registers written as changes, replicated with the log,
/// kept by the durable store, and never part of the replicas' content.
@Suite("Cluster settings")
struct SettingsTests {
    static func store(_ node: UInt64) -> MemoryProfileStore {
        MemoryProfileStore(configuration: StoreConfiguration(node: node, forgetKeySecret: Array(repeating: 3, count: 32)))
    }

    @Test func theNewestStampWinsEverywhereWhateverTheOrder() throws {
        let a = Self.store(1), b = Self.store(2)
        let old = LWWStamp(time: 10, tiebreak: "a"), new = LWWStamp(time: 20, tiebreak: "b")
        try a.setSetting("subscription:crm", Array("v1".utf8), stamp: old)
        try b.setSetting("subscription:crm", Array("v2".utf8), stamp: new)
        try b.setSetting("subscription:other", [], stamp: old)
        // Each replicates the other's log.
        try a.applyReplicated(try b.changes(after: 0, limit: 100), from: 2, through: nil)
        try b.applyReplicated(try a.changes(after: 0, limit: 100), from: 1, through: nil)
        for store in [a, b] {
            #expect(try store.settings(prefix: "subscription:").map(\.name) == ["subscription:crm", "subscription:other"])
            #expect(try store.settings(prefix: "subscription:crm") == [StoredSetting(name: "subscription:crm", value: Array("v2".utf8), stamp: new)])
            #expect(try store.settings(prefix: "subscription:other").first?.value == [], "a removal stays, as a tombstone")
        }
        // Written again with an older stamp: logged (it travels), nothing changes.
        let before = try a.logExtent().last
        try a.setSetting("subscription:crm", Array("v0".utf8), stamp: old)
        #expect(try a.logExtent().last == before + 1 && a.settings(prefix: "subscription:crm").first?.value == Array("v2".utf8))
        // By exact name: a setting whose name only begins with it is another one.
        try a.setSetting("subscription:crm2", Array("v9".utf8), stamp: new)
        #expect(try a.setting(named: "subscription:crm")?.value == Array("v2".utf8) && a.setting(named: "subscription:cr") == nil)
        // Not the replicas' content: settings leave the content digest alone.
        #expect(try a.contentDigest() == Self.store(1).contentDigest())
    }

    @Test func theDurableStoreKeepsThemAcrossARestart() throws {
        let path = SealingTests.directory()
        defer {
            try? FileManager.default.removeItem(atPath: path)  // scratch
            try? FileManager.default.removeItem(atPath: path + ".keys")  // scratch
        }
        let configuration = StoreConfiguration(node: 7, forgetKeySecret: Array(repeating: 3, count: 32))
        let stamp = LWWStamp(time: 5, tiebreak: "n")
        do {
            let store = try LMDBProfileStore(path: path, configuration: configuration)
            try store.setSetting("subscription:crm", Array("definition".utf8), stamp: stamp)
        }
        let reopened = try LMDBProfileStore(path: path, configuration: configuration)
        #expect(
            try reopened.settings(prefix: "subscription:") == [StoredSetting(name: "subscription:crm", value: Array("definition".utf8), stamp: stamp)]
        )
        guard case .setting(let name, _, _)? = try reopened.changes(after: 0, limit: 10).last?.change else {
            Issue.record("the setting was not logged")
            return
        }
        #expect(name == "subscription:crm")
    }
}
