import Foundation
import KithCRDT
import KithCrypto
import KithLMDB
import KithProfile
import KithTestSupport
import Testing

@testable import KithStore
@testable import KithStoreLMDB

/// Replicas that accept writes independently and read each other's change logs in random pieces
/// must end byte-identical, and equal to the reference model fed every operation once.
@Suite("Store replication")
struct StoreReplicationTests {
    /// One replica under test with its node id and (for LMDB) its directory.
    final class Replica {
        let node: UInt64
        let store: any ProfileStore
        let path: String?

        init(node: UInt64, lmdb: Bool) throws {
            self.node = node
            let configuration = StoreConfiguration(node: node, forgetKeySecret: secret)
            if lmdb {
                let path = FileManager.default.temporaryDirectory.appendingPathComponent("kith-repl-\(UUID().uuidString)").path
                var settings = LMDBEnvironment.Configuration()
                settings.durable = false
                store = try LMDBProfileStore(path: path, configuration: configuration, lmdb: settings)
                self.path = path
            } else {
                store = MemoryProfileStore(configuration: configuration)
                path = nil
            }
        }

        /// Reads up to `limit` entries of `source`'s log after this replica's cursor; returns how many were new.
        @discardableResult
        func pull(from source: Replica, limit: Int) throws -> Int {
            let entries = try source.store.changes(after: try store.cursor(of: source.node), limit: limit)
            let held = try store.versionVector()
            let wanted = entries.filter { !held.covers(origin: $0.origin, sequence: $0.originSequence) }
            return try store.applyReplicated(wanted, from: source.node, through: entries.last?.sequence)
        }

        deinit { if let path { try? FileManager.default.removeItem(atPath: path) } }
    }

    @Test(arguments: 0..<40 as Range<UInt64>)
    func replicasConvergeToTheReferenceModel(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        let replicas = try (0..<3).map { try Replica(node: UInt64($0) + 1, lmdb: $0 == 1) }
        let work = RandomStoreWork(seed: seed)

        for step in 0..<500 {
            let replica = replicas[random.below(replicas.count)]
            if random.below(100) < 77 {
                try work.operate(on: replica.store, node: replica.node, step: step, random: &random)
            } else {
                let source = replicas[random.below(replicas.count)]
                if source !== replica { try replica.pull(from: source, limit: 1 + random.below(40)) }
            }
        }

        var round = 0
        while try replicas.reduce(
            0, { total, replica in try total + replicas.filter { $0 !== replica }.reduce(0) { try $0 + replica.pull(from: $1, limit: 1_000) } }) > 0
        {
            round += 1
            #expect(round < 10, "seed \(seed): replicas keep exchanging changes")
            if round >= 10 { return }
        }
        try expectConverged(replicas, to: work, seed: seed)
    }
}

/// Replicas byte-identical to each other, and every view equal to the reference model's.
func expectConverged(_ replicas: [StoreReplicationTests.Replica], to work: RandomStoreWork, seed: UInt64) throws {
    let digests = try replicas.map { try $0.store.contentDigest() }
    #expect(Set(digests).count == 1, "seed \(seed): replicas differ after full exchange")
    if Set(digests).count != 1 {
        // Name the kind of rows that differ (document part or forget set), never their bytes.
        let rows = try replicas.map { replica in
            Set(try rawEntries(replica.store).filter { $0.table == .documents || $0.table == .forget }.map { $0.key + [0xFF] + $0.value })
        }
        for (index, other) in rows.enumerated().dropFirst() {
            let parts = rows[0].symmetricDifference(other).map { row in row.firstIndex(of: 0).map { row[$0 + 1] } ?? 0 }
            Issue.record("seed \(seed): node 1 and node \(index + 1) differ in rows of parts \(Set(parts).sorted())")
            if ProcessInfo.processInfo.environment["KITH_DEBUG_ROWS"] != nil {
                for row in rows[0].subtracting(other) { print("only 1:", String(decoding: row.prefix(60).map { $0 < 32 ? 46 : $0 }, as: UTF8.self)) }
                for row in other.subtracting(rows[0]) {
                    print("only \(index + 1):", String(decoding: row.prefix(60).map { $0 < 32 ? 46 : $0 }, as: UTF8.self))
                }
            }
        }
    }
    for replica in replicas {
        for identifier in work.reference.identifiers.sorted() {
            let expected = work.reference.view(of: identifier).map { ProfileFormat.encode($0) }
            let actual = try replica.store.view(of: identifier).map { ProfileFormat.encode($0) }
            #expect(actual == expected, "seed \(seed): node \(replica.node), view of \(identifier)")
            if actual != expected { return }
        }
    }
}

/// Random work shaped like the workload — messages, unlinks and erasures at random replicas —
/// with the reference model fed every operation once.
final class RandomStoreWork {
    private(set) var reference = ProfileState()
    private var generator: WorkloadGenerator
    private let parser = SegmentMessageParser()
    private let base: Int64 = 1_760_000_100_000
    let customers = 12

    init(seed: UInt64) {
        generator = WorkloadGenerator(seed: seed, customers: customers)
        generator.sendsSentAt = true
    }

    /// One operation at `store`: 70 in 77 a message, 5 an unlink, 2 an erasure.
    func operate(on store: any ProfileStore, node: UInt64, step: Int, random: inout SplitMix64) throws {
        let roll = random.below(77)
        if roll < 70 {
            let receivedAt = base + Int64(step) * 10 + Int64(node) * 7
            let delta = try parser.parse(generator.next(), receivedAt: receivedAt)
            try store.apply([delta])
            reference.apply(delta, hasher: hmac)
        } else if roll < 75 {
            let c = random.below(customers)
            let a = Identifier(kind: .userId, value: "u-\(c)")!, b = Identifier(kind: .anonymousId, value: "a-\(c)-\(random.below(3))")!
            let stamp = LWWStamp(time: 1_760_000_000_000 + Int64(step) * 50, tiebreak: "node-\(node)-\(step)")
            try store.removeLink(a, b, stamp: stamp)
            reference.removeLink(a, b, stamp: stamp, hasher: hmac)
        } else {
            let subject = Identifier(kind: .userId, value: "u-\(random.below(customers))")!
            let erased = try store.erase(subject, requestedAt: 1_760_000_000_000 + Int64(step) * 40)
            guard !erased.members.isEmpty, case .erasure(let keys, let time) = try store.changes(after: 0, limit: .max).last!.change else { return }
            reference.applyErasure(forgetKeys: keys.map(Crypto.hex), time: time, hasher: hmac)
        }
    }
}
