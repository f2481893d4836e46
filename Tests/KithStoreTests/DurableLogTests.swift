import Foundation
import KithJSON
import KithLMDB
import KithProfile
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// The durable store says which of its log entries are on disk for good: commits whose sync was
/// deferred are not, until `synchronize`; a synced commit makes every commit before it durable;
/// and a store opened again has synced whatever a stopped process left in the page cache.
@Suite("The durable part of the change log")
struct DurableLogTests {
    func identify(_ n: Int) throws -> ProfileDelta {
        try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-\#(n)"}"#.utf8)), receivedAt: 1)
    }

    func open(_ path: String) throws -> LMDBProfileStore {
        var lmdb = LMDBEnvironment.Configuration()
        lmdb.allowsDeferredSync = true
        return try LMDBProfileStore(path: path, configuration: configuration, lmdb: lmdb)
    }

    @Test func deferredCommitsBecomeDurableWhenSynced() throws {
        let path = SealingTests.directory()
        defer {
            try? FileManager.default.removeItem(atPath: path)  // scratch
            try? FileManager.default.removeItem(atPath: path + ".keys")  // scratch
        }
        do {
            let store = try open(path)
            _ = try store.apply([try identify(1)])
            #expect(store.durableLogSequence() == 1)
            _ = try store.applyDeferringSync([try identify(2)])
            _ = try store.applyDeferringSync([try identify(3)])
            #expect(try store.logExtent().last == 3 && store.durableLogSequence() == 1)
            try store.synchronize()
            #expect(store.durableLogSequence() == 3)
            _ = try store.applyDeferringSync([try identify(4)])
            #expect(store.durableLogSequence() == 3)
            // A synced write of another kind covers the deferred one before it.
            _ = try store.apply([try identify(5)])
            #expect(store.durableLogSequence() == 5)
            _ = try store.applyDeferringSync([try identify(6)])
            #expect(store.durableLogSequence() == 5)
        }
        let reopened = try open(path)
        #expect(try reopened.logExtent().last == 6 && reopened.durableLogSequence() == 6)
    }
}
