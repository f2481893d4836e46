import KithCRDT
import KithCluster
import KithJSON
import KithProfile
import KithReplication
import KithStore
import Testing

/// A node commits messages with their sync deferred (docs/storage.md, "Durability"): its peers
/// must read only the entries already on disk, in pulls, pushes and the position a resync brings
/// them to. An entry a crash could still undo would have its sequence number given to another
/// change after the restart, and a peer that had read it would skip that change.
@Suite("Replication of durable changes only")
struct DurableReplicationTests {
    final class Outbox: @unchecked Sendable {
        var messages: [PeerMessage] = []
    }

    func identify(_ n: Int) throws -> ProfileDelta {
        try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-\#(n)"}"#.utf8)), receivedAt: 1)
    }

    @Test func peersReadOnlyWhatIsOnDisk() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Simulation.secret))
        let outbox = Outbox()
        let me = Member(id: 1, name: "n1", address: "n1", role: .core)
        let node = try ClusterNode(store: store, me: me, seeds: [], settings: ReplicationSettings(), seed: 1) { _, message in
            outbox.messages.append(message)
        }
        let peer = Member(id: 2, name: "n2", address: "n2", role: .core)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: 2, address: "n2", now: 0)
        // One commit synced, then two whose sync is deferred.
        _ = try store.apply([try identify(1)])
        _ = try store.applyDeferringSync([try identify(2)])
        _ = try store.applyDeferringSync([try identify(3)])
        #expect(try store.logExtent().last == 3 && store.durableLogSequence() == 1)

        func pulled(after cursor: UInt64, request: UInt64) throws -> (through: UInt64, sequences: [UInt64], more: Bool) {
            outbox.messages.removeAll()
            try node.receive(.pull(cursor: cursor, versions: VersionVector(), budget: 1 << 20, request: request), from: 2, address: "n2", now: 10)
            for case .changes(_, let through, let entries, let more, _, request) in outbox.messages {
                return (through, entries.map(\.sequence), more)
            }
            Issue.record("no answer to pull \(request): \(outbox.messages)")
            return (0, [], false)
        }
        func pushed() throws -> [UInt64] {
            outbox.messages.removeAll()
            try node.pushOwnChanges()
            return outbox.messages.flatMap { message -> [UInt64] in
                guard case .push(_, let entries) = message else { return [] }
                return entries.map(\.sequence)
            }
        }

        let first = try pulled(after: 0, request: 1)
        #expect(first.sequences == [1] && first.through == 1 && !first.more, "\(first)")
        #expect(try pushed() == [1])

        store.synchronize()
        let second = try pulled(after: 1, request: 2)
        #expect(second.sequences == [2, 3] && second.through == 3, "\(second)")
        #expect(try pushed() == [2, 3])
    }
}
