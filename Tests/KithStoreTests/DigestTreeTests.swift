import Foundation
import KithCRDT
import KithJSON
import KithLMDB
import KithProfile
import KithTestSupport
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// The digest tree (anti-entropy): kept exact at write time, and enough on its own to bring
/// replicas that never read each other's logs to the same bytes.
@Suite("Digest tree")
struct DigestTreeTests {
    typealias Replica = StoreReplicationTests.Replica

    /// After random messages, unlinks, erasures and log exchanges, each store's tree holds
    /// exactly the digests computed from its rows, and every node is the sum of its children.
    @Test(arguments: 0..<16 as Range<UInt64>)
    func theTreeFollowsEveryWrite(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let replicas = try (0..<2).map { try Replica(node: UInt64($0) + 1, lmdb: $0 == 1) }
        let work = RandomStoreWork(seed: seed)
        for step in 0..<300 {
            let replica = replicas[random.below(replicas.count)]
            if random.below(100) < 85 {
                try work.operate(on: replica.store, node: replica.node, step: step, random: &random)
            } else {
                try replica.pull(from: replicas.first { $0 !== replica }!, limit: 1 + random.below(30))
            }
            if step % 50 == 49 { for replica in replicas { try expectTreeIsExact(replica.store, seed: seed) } }
        }
    }

    /// Replicas that took writes independently and never read each other's change logs — as
    /// if the logs were truncated — end byte-identical, and equal to the reference model, by
    /// comparing trees and swapping the states of the keys that differ.
    @Test(arguments: 0..<40 as Range<UInt64>)
    func comparingTreesAloneConverges(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let replicas = try (0..<3).map { try Replica(node: UInt64($0) + 1, lmdb: $0 == 1) }
        let work = RandomStoreWork(seed: seed)
        for step in 0..<300 {
            let replica = replicas[random.below(replicas.count)]
            try work.operate(on: replica.store, node: replica.node, step: step, random: &random)
            // Now and then a partial repair between two replicas, mid-way through the writes.
            if random.below(20) == 0 {
                let other = replicas[random.below(replicas.count)]
                if other !== replica { _ = try compare(replica.store, other.store, keyLimit: 1 + random.below(4)) }
            }
        }
        var rounds = 0
        while try replicas.reduce(0, { total, a in try total + replicas.filter { $0 !== a }.reduce(0) { try $0 + compare(a.store, $1.store) } }) > 0 {
            rounds += 1
            #expect(rounds < 4, "seed \(seed): comparisons keep finding differences")
            if rounds >= 4 { return }
        }
        try expectConverged(replicas, to: work, seed: seed)
        let roots = try replicas.map { try $0.store.digest(of: []) }
        #expect(Set(roots).count == 1, "seed \(seed): converged replicas have different roots")
        for replica in replicas { try expectTreeIsExact(replica.store, seed: seed) }
    }

    /// Converged replicas have equal roots, and a comparison finds nothing to send.
    @Test func convergedReplicasExchangeOnlyTheRoot() throws {
        let replicas = try (0..<2).map { try Replica(node: UInt64($0) + 1, lmdb: $0 == 0) }
        let work = RandomStoreWork(seed: 99)
        var random = SplitMix64(seed: 99)
        for step in 0..<100 { try work.operate(on: replicas[0].store, node: 1, step: step, random: &random) }
        try replicas[1].pull(from: replicas[0], limit: 10_000)
        #expect(try replicas[0].store.digest(of: []) == replicas[1].store.digest(of: []))
        #expect(try !replicas[0].store.digest(of: []).isZero)
        #expect(try compare(replicas[0].store, replicas[1].store) == 0)
    }

    /// A state whose identifier does not hash to its forget key is refused, and nothing changes.
    @Test(arguments: StoreKind.allCases)
    func aForgedStateIsRefused(kind: StoreKind) throws {
        let source = try StoreFixture(.memory), target = try StoreFixture(kind)
        try source.store.apply([delta(user: "u-1", messageId: "m-1")])
        try target.store.apply([delta(user: "u-2", messageId: "m-2")])
        var state = try source.store.documentStates(for: [hmac.forgetKeyBytes(for: user("u-1"))])[0]
        state.forgetKey = hmac.forgetKeyBytes(for: user("u-2"))
        let before = try target.store.contentDigest()
        #expect(throws: DocumentStateRejected.self) { try target.store.join([state]) }
        #expect(try target.store.contentDigest() == before)
    }

    /// An erasure travels as a forget key with nothing else, and drops what it dominates.
    @Test(arguments: StoreKind.allCases)
    func anErasureTravelsAsItsForgetKey(kind: StoreKind) throws {
        let erasing = try StoreFixture(.memory), holding = try StoreFixture(kind)
        let message = delta(user: "u-1", messageId: "m-1")
        for fixture in [erasing, holding] { try fixture.store.apply([message]) }
        try erasing.store.erase(user("u-1"), requestedAt: message.times.eventTime + 1)
        let states = try erasing.store.documentStates(for: [hmac.forgetKeyBytes(for: user("u-1"))])
        #expect(states.count == 1 && states[0].identifier == nil && states[0].rows.isEmpty && states[0].forgottenAt != nil)
        #expect(try holding.store.join(states) == 1)
        #expect(try holding.store.view(of: user("u-1")) == nil)
        #expect(try holding.store.contentDigest() == erasing.store.contentDigest())
        #expect(try holding.store.join(states) == 0, "joining the same state twice changes nothing")
    }

    /// A store written before the tree existed gets it built when it opens.
    @Test func theTreeIsBuiltForAnOlderStore() throws {
        let fixture = try StoreFixture(.lmdb)
        let work = RandomStoreWork(seed: 5)
        var random = SplitMix64(seed: 5)
        for step in 0..<80 { try work.operate(on: fixture.store, node: 1, step: step, random: &random) }
        let root = try fixture.store.digest(of: [])
        try #require(fixture.store as? LMDBProfileStore).write { txn in
            try txn.deletePrefix(.merkle, [])
            _ = try txn.delete(.meta, digestsMetaKey)
        }
        #expect(try fixture.store.digest(of: []).isZero)
        try fixture.reopen()
        #expect(try fixture.store.digest(of: []) == root)
        try expectTreeIsExact(fixture.store, seed: 5)
    }

    /// A store opened without replication state (a node without peers) writes none and drops
    /// what it had, so that state the writes stopped following is never read later; opened to
    /// replicate again, it has the tree summed from its rows and a copy of every logged entry
    /// that travels ahead, exactly as a store that replicated all along.
    @Test func aStoreWithoutPeersDropsItsReplicationStateAndRebuildsItLater() throws {
        let fixture = try StoreFixture(.lmdb), throughout = try StoreFixture(.lmdb)
        let work = RandomStoreWork(seed: 6), workThroughout = RandomStoreWork(seed: 6)
        var random = SplitMix64(seed: 6), randomThroughout = SplitMix64(seed: 6)
        func operate(_ steps: Range<Int>) throws {
            for step in steps {
                try work.operate(on: fixture.store, node: 1, step: step, random: &random)
                try workThroughout.operate(on: throughout.store, node: 1, step: step, random: &randomThroughout)
            }
        }
        try operate(0..<60)
        try expectTreeIsExact(fixture.store, seed: 6)
        try fixture.reopen(replicates: false)
        try expectNoReplicationState(fixture.store)
        try operate(60..<200)
        try expectNoReplicationState(fixture.store)
        try fixture.reopen()
        try expectTreeIsExact(fixture.store, seed: 6)
        let ahead = try throughout.store.entriesAhead(after: 0, limit: .max)
        #expect(ahead.contains { if case .erasure = $0.change { true } else { false } })
        #expect(ahead.contains { if case .message = $0.change { true } else { false } })
        #expect(try fixture.store.entriesAhead(after: 0, limit: .max) == ahead)
        #expect(try fixture.store.digest(of: []) == throughout.store.digest(of: []))
    }

    /// Without replication state, the same work leaves the same profiles and records.
    @Test(arguments: StoreKind.allCases)
    func storesWithAndWithoutReplicationStateHoldTheSame(_ kind: StoreKind) throws {
        let stores = try [true, false].map { keeps in
            try StoreFixture.open(
                kind, path: FileManager.default.temporaryDirectory.appendingPathComponent("kith-tree-\(UUID().uuidString)").path,
                replicates: keeps)
        }
        for store in stores {
            let work = RandomStoreWork(seed: 7)
            var random = SplitMix64(seed: 7)
            for step in 0..<150 { try work.operate(on: store, node: 1, step: step, random: &random) }
        }
        #expect(try stores[0].contentDigest() == stores[1].contentDigest())
        for case let lmdb as LMDBProfileStore in stores {
            try? FileManager.default.removeItem(atPath: lmdb.environment.path)
            try? FileManager.default.removeItem(atPath: lmdb.keyFile)
        }
    }

    /// A link to an erased customer, asserted after the erasure, reaches a replica that holds the
    /// erasure by a document state: the link is rebuilt from the state's own ledger rows, so it
    /// holds there as where it was asserted. (Rows sort after links; joining in row order once
    /// rebuilt the link before its assertion had arrived, and dropped it. The retention
    /// simulation found it, through a resync after log truncation.)
    @Test(arguments: StoreKind.allCases)
    func aLinkAssertedAfterAnErasureArrivesWithItsDocument(_ kind: StoreKind) throws {
        let source = try StoreFixture(kind), target = try StoreFixture(kind)
        let erased = user("u-e")
        let parse = { (json: String, at: Int64) in try SegmentMessageParser().parse(try JSONParser.parse(Array(json.utf8)), receivedAt: at) }
        let before = try parse(#"{"type":"identify","userId":"u-e","anonymousId":"a-e","messageId":"m-1"}"#, 1_760_000_000_000)
        for store in [source.store, target.store] {
            _ = try store.apply([before])
            try store.erase(erased, requestedAt: 1_760_000_001_000)
        }
        let after = try parse(#"{"type":"identify","userId":"u-e","anonymousId":"a-e","messageId":"m-2"}"#, 1_760_000_002_000)
        _ = try source.store.apply([after])
        // The other end's state first: then the assertion (the subject's ledger row) comes last.
        let hasher = HMACForgetKeyHasher(secret: configuration.forgetKeySecret)
        for identifier in [Identifier(kind: .anonymousId, value: "a-e")!, erased] {
            _ = try target.store.join(try source.store.documentStates(for: [hasher.forgetKeyBytes(for: identifier)]))
        }
        #expect(try target.store.view(of: erased)?.members.count == 2)
        #expect(try target.store.contentDigest() == source.store.contentDigest())
    }

    // MARK: Helpers

    private func expectNoReplicationState(_ store: any ProfileStore) throws {
        let lmdb = try #require(store as? LMDBProfileStore)
        #expect(try lmdb.read { try $0.get(.meta, digestsMetaKey) } == nil)
        #expect(try lmdb.read { try $0.get(.meta, aheadMetaKey) } == nil)
        for table in [Table.merkle, .ahead] {
            let rows = try lmdb.read { reader in
                var count = 0
                try reader.scan(table, prefix: []) { _, _ in
                    count += 1
                    return .next
                }
                return count
            }
            #expect(rows == 0, "\(table.name) keeps \(rows) rows")
        }
        #expect(throws: ReplicationStateNotKept.self) { try store.entriesAhead(after: 0, limit: 10) }
        #expect(throws: ReplicationStateNotKept.self) { try store.digest(of: []) }
    }

    private func user(_ id: String) -> Identifier { Identifier(kind: .userId, value: id)! }

    private func delta(user id: String, messageId: String) -> ProfileDelta {
        let json = #"{"type":"identify","userId":"\#(id)","messageId":"\#(messageId)","timestamp":"2025-10-09T10:00:00Z","traits":{"plan":"pro"}}"#
        return try! SegmentMessageParser().parse(try! JSONParser.parse(json), receivedAt: 1_760_000_000_000)
    }

    private func expectTreeIsExact(_ store: any ProfileStore, seed: UInt64) throws {
        let engineBacked = try #require(store as? any EngineBackedStore)
        let (stored, expected) = try engineBacked.treeNodes()
        #expect(
            stored == expected, "seed \(seed): the stored tree (\(stored.count) nodes) differs from the one summed from the rows (\(expected.count))")
        // Leaves computed by bucket (as a comparison asks) are the leaves summed from the rows.
        let leaves = try engineBacked.recomputedDigests()
        var listed: [[UInt8]: Digest128] = [:]
        for range in try store.digestChildren(of: []) {
            for bucket in try store.digestChildren(of: range.key) {
                for leaf in try store.digestChildren(of: bucket.key) { listed[leaf.key] = leaf.digest }
            }
        }
        #expect(listed == leaves, "seed \(seed): the \(listed.count) leaves listed under the buckets differ from the \(leaves.count) of the rows")
    }
}

/// Compares the trees of `a` and `b` as `ClusterNode` does (down where digests differ) and
/// swaps the states of the differing keys, at most `keyLimit` of them. Returns how many keys differed.
func compare(_ a: any ProfileStore, _ b: any ProfileStore, keyLimit: Int = .max) throws -> Int {
    var nodes: [[UInt8]] = try a.digest(of: []) == b.digest(of: []) ? [] : [[]]
    var keys: [[UInt8]] = []
    while let node = nodes.popLast() {
        let mine = try a.digestChildren(of: node), theirs = try b.digestChildren(of: node)
        var digests: [[UInt8]: [Digest128?]] = [:]
        for entry in mine { digests[entry.key, default: [nil, nil]][0] = entry.digest }
        for entry in theirs { digests[entry.key, default: [nil, nil]][1] = entry.digest }
        let differing = digests.filter { $0.value[0] != $0.value[1] }.map(\.key)
        if DigestTreeShape.isBucket(node) { keys += differing } else { nodes += differing }
    }
    keys = Array(keys.sorted { $0.lexicographicallyPrecedes($1) }.prefix(keyLimit))
    guard !keys.isEmpty else { return 0 }
    let fromA = try a.documentStates(for: keys)
    try b.join(fromA)
    try a.join(try b.documentStates(for: keys))
    return keys.count
}
