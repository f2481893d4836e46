import Foundation
import KithCRDT
import KithCluster
import KithJSON
import KithProfile
import KithStore
import KithTestSupport
import Testing

/// Issue 7's checker: clients that carry their session token from node to node, under
/// partitions, loss, delays and crashes, never read a state without their own writes, and never
/// see their profile go back — whenever a node serves the read. Whether and when it does is the
/// node's own decision (`ClusterNode.startWait(.session)`, settled as the node runs, as the HTTP
/// shell carries it out): at once, after pulling what it lacks, or not within the deadline (a
/// 503). After healing, every client's read is served everywhere.
func runSessionScenario(seed: UInt64) throws -> (failures: [String], served: Int, deferred: Int, servedAfterWaiting: Int) {
    var setup = SplitMix64(seed: seed ^ 0x5E55)
    let sim = try Simulation(seed: seed, nodes: 3 + setup.below(3), edges: 0)
    sim.faults = .init(lossPercent: setup.below(15), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(60)))

    struct Client {
        var token = VersionVector()
        var written: [String] = []
        var lastSeen: Int64 = 0
    }
    var clients = [Client](repeating: Client(), count: 4)
    var failures: [String] = [], served = 0, deferred = 0, servedAfterWaiting = 0, timedOut = 0, count = 0

    func write(_ client: Int, at machine: Simulation.Machine) throws {
        count += 1
        let id = "s\(seed)-c\(client)-\(count)"
        let text = #"{"type":"track","messageId":"\#(id)","userId":"client-\#(client)","event":"Visit","timestamp":"2026-01-01T00:00:00Z"}"#
        try machine.store.apply([try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: sim.clock(machine))])
        try machine.node?.pushOwnChanges()
        clients[client].written.append(id)
        clients[client].token.advance(origin: machine.member.id, to: try machine.store.versionVector()[machine.member.id])
    }

    /// Reads waiting at a node: (machine, the wait's number, the machine's crash count then) → client.
    var waiting: [(machine: Simulation.Machine, number: UInt64, crashes: Int, client: Int)] = []

    /// Starts a read; serves it now if the node says the session is covered.
    func read(_ client: Int, at machine: Simulation.Machine) throws {
        let (number, outcome) = try sim.startWait(.session(clients[client].token), at: machine)
        guard let outcome else {
            deferred += 1
            return waiting.append((machine, number, machine.crashes, client))
        }
        #expect(outcome.isMet, "a wait decided at once is met")
        try serve(client, at: machine)
    }

    /// The reads whose waits the nodes decided: served if met, a 503 otherwise.
    func serveDecidedReads() throws {
        var still: [(machine: Simulation.Machine, number: UInt64, crashes: Int, client: Int)] = []
        for read in waiting {
            guard read.machine.crashes == read.crashes else { continue }  // the connection was reset
            guard let outcome = read.machine.outcomes.removeValue(forKey: read.number) else {
                still.append(read)
                continue
            }
            if outcome.isMet {
                servedAfterWaiting += 1
                try serve(read.client, at: read.machine)
            } else {
                timedOut += 1
            }
        }
        waiting = still
    }

    func serve(_ client: Int, at machine: Simulation.Machine) throws {
        served += 1
        let subject = Identifier(kind: .userId, value: "client-\(client)")!
        for id in clients[client].written where try !machine.store.hasMessage(id, subject: subject) {
            failures.append("\(machine.member.name) served client \(client) without its write \(id)")
            break
        }
        let seen = try machine.store.view(of: subject)?.head.messageCount ?? 0
        if seen < clients[client].lastSeen {
            failures.append("\(machine.member.name) showed client \(client) \(seen) messages after \(clients[client].lastSeen)")
        }
        clients[client].lastSeen = max(clients[client].lastSeen, seen)
        clients[client].token.merge(try machine.store.versionVector())
    }

    try sim.run(until: 12_000) { sim in
        if sim.random.chance(30) {
            let up = sim.machines.filter { $0.node != nil }
            if !up.isEmpty {
                let client = sim.random.below(clients.count), machine = up[sim.random.below(up.count)]
                // A client waits for its read's answer before its next request, as over HTTP.
                if !waiting.contains(where: { $0.client == client && $0.machine.crashes == $0.crashes }) {
                    if sim.random.chance(50) { try write(client, at: machine) } else { try read(client, at: machine) }
                }
            }
        }
        try serveDecidedReads()
        sim.injectFault()
    }
    try sim.heal()
    try sim.run(until: 30_000)
    try serveDecidedReads()
    for client in clients.indices {
        for machine in sim.machines {
            let (number, immediate) = try sim.startWait(.session(clients[client].token), at: machine)
            guard let outcome = try immediate ?? sim.awaitOutcome(number, at: machine), outcome.isMet else {
                failures.append("\(machine.member.name) still cannot serve client \(client) after healing")
                continue
            }
            try serve(client, at: machine)
        }
    }
    return (failures.prefix(3).map { "seed \(seed): \($0)" }, served, deferred, servedAfterWaiting)
}

@Suite("Simulation: sessions across nodes")
struct SessionSimulationTests {
    @Test func clientsNeverMissTheirWritesOrGoBackInTime() throws {
        var failed: [String] = [], served = 0, deferred = 0, servedAfterWaiting = 0
        for seed in simulationSeeds(ci: 200) {
            let run = try runSessionScenario(seed: seed)
            failed += run.failures
            served += run.served
            deferred += run.deferred
            servedAfterWaiting += run.servedAfterWaiting
        }
        #expect(failed.isEmpty, "\(failed.prefix(10).joined(separator: "\n"))")
        // Every path happens: reads served at once, reads a node had to wait for, and among
        // those, reads it served once it had pulled what the session covers.
        #expect(
            served > 1_000 && deferred > 10 && servedAfterWaiting > 5, "served \(served), deferred \(deferred), after waiting \(servedAfterWaiting)")
    }
}

/// Quorum reads after quorum writes, in the simulation: a write is acknowledged when its node
/// decides a majority of the replicas hold it (`startWait(.replicas)`), a read is answered when
/// its node decides a majority (itself included) have answered the pulls it sent for the read
/// (`startWait(.replicaReads)`), exactly as the HTTP shell carries those decisions out; under
/// partitions and loss, every acknowledged write is then seen.
func runQuorumScenario(seed: UInt64) throws -> (failures: [String], reads: Int) {
    var setup = SplitMix64(seed: seed ^ 0x0C0C)
    let sim = try Simulation(seed: seed, nodes: 3 + 2 * setup.below(2), edges: 0)
    sim.faults = .init(lossPercent: setup.below(10), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(40)))
    try sim.run(until: 1_000)
    var acknowledged: [(id: String, subject: Identifier)] = []
    var failures: [String] = [], reads = 0

    for round in 0..<30 {
        // A partition now and then: a minority may be cut off, a majority stays connected.
        sim.blocked = []
        if round % 3 == 0 {
            let cut = sim.random.below(sim.machines.count)
            for other in sim.machines.indices where other != cut { sim.blocked.formUnion([[cut, other], [other, cut]]) }
        }
        let writer = sim.machines[sim.random.below(sim.machines.count)]
        let id = "q\(seed)-\(round)"
        let text = #"{"type":"identify","messageId":"\#(id)","userId":"quorum-\#(round % 5)","traits":{"round":\#(round)}}"#
        try writer.store.apply([try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: sim.clock(writer))])
        let own = try writer.store.versionVector()[writer.member.id]
        let write = try sim.startWait(.replicas(ownThrough: own, concern: .quorum), at: writer)
        if let outcome = try write.outcome ?? sim.awaitOutcome(write.number, at: writer), outcome.isMet {
            acknowledged.append((id, Identifier(kind: .userId, value: "quorum-\(round % 5)")!))
        }

        // A quorum read at another node.
        let reader = sim.machines[sim.random.below(sim.machines.count)]
        let read = try sim.startWait(.replicaReads(.quorum), at: reader)
        guard let outcome = try read.outcome ?? sim.awaitOutcome(read.number, at: reader), outcome.isMet else { continue }  // a 503: nothing to check
        reads += 1
        for write in acknowledged where try !reader.store.hasMessage(write.id, subject: write.subject) {
            failures.append("round \(round): \(reader.member.name) answered a quorum read without the acknowledged write \(write.id)")
        }
    }
    return (failures.prefix(3).map { "seed \(seed): \($0)" }, reads)
}

@Suite("Simulation: quorum reads after quorum writes")
struct QuorumSimulationTests {
    @Test func aQuorumReadSeesEveryQuorumWrite() throws {
        var failed: [String] = [], reads = 0
        for seed in simulationSeeds(ci: 200) {
            let run = try runQuorumScenario(seed: seed)
            failed += run.failures
            reads += run.reads
        }
        #expect(failed.isEmpty, "\(failed.prefix(10).joined(separator: "\n"))")
        #expect(reads > 2_000, "\(reads) quorum reads were answered")
    }
}
