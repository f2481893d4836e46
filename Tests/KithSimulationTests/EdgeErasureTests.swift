import Foundation
import KithCRDT
import KithCrypto
import KithJSON
import KithProfile
import KithStore
import KithTestSupport
import Testing

/// Issue 6's erasure scenario, by name: an edge site holding a customer is cut off while the
/// customer is erased at a core node; meanwhile the edge keeps taking the customer's messages,
/// some dated before the erasure (they were queued at a till) and some after. When it
/// reconnects, every node holds none of the erased data and all of the newer data.
func runEdgeErasureScenario(seed: UInt64) throws -> [String] {
    let sim = try Simulation(seed: seed, nodes: 3, edges: 1)
    sim.faults = .init(lossPercent: Int(seed % 10), duplicatePercent: Int(seed % 5), maximumDelay: 5 + Int64(seed % 40))
    let edge = sim.machines[2], core = sim.machines[0]
    let customer = Identifier(kind: .userId, value: "u-1")!
    var ledger = Ledger()
    var count = 0

    /// A message for the customer on `machine`, dated `time` (ms), with a trait and an event.
    func send(_ machine: Simulation.Machine, dated time: Int64) throws {
        count += 1
        let text =
            #"{"type":"identify","messageId":"edge-\#(seed)-\#(count)","userId":"u-1","traits":{"visit":\#(count)},"context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#
        var delta = try SegmentMessageParser().parse(JSONParser.parse(Array(text.utf8)), receivedAt: time)
        delta.times = MessageTimes(timestamp: time, originalTimestamp: nil, sentAt: nil, receivedAt: time)
        try machine.store.apply([delta])
        ledger.acknowledge(delta, at: sim.now)
        try machine.node?.pushOwnChanges()
    }

    // The customer shops at the edge and online; everything spreads.
    try sim.run(until: 2_000) { sim in
        if sim.random.chance(20) { try send(sim.random.chance(50) ? edge : core, dated: sim.clock(edge)) }
    }
    // The edge goes offline; the customer is erased at a core node.
    for other in [0, 1] { sim.blocked.formUnion([[2, other], [other, 2]]) }
    try sim.run(until: 2_500)
    let erasedAt = sim.clock(core)
    guard
        case .erasure(let keys, let time)? = try {
            _ = try core.store.erase(customer, requestedAt: erasedAt)
            return try core.store.changes(after: core.store.versionVector()[core.member.id] - 1, limit: 1).last?.change
        }()
    else { return ["seed \(seed): the erasure was not logged"] }
    ledger.reference.applyErasure(forgetKeys: keys.map(Crypto.hex), time: time, hasher: ledger.hasher)
    ledger.erasures.append(.init(keys: keys, boundary: time))
    try core.node?.pushOwnChanges()
    // Offline, the edge takes messages queued before the erasure and new ones after it.
    try send(edge, dated: time - 1)
    try send(edge, dated: time + 1)
    try sim.run(until: 6_000) { sim in
        guard sim.random.chance(10) else { return }
        try send(edge, dated: sim.random.chance(50) ? time - 1 - Int64(sim.random.below(1_500)) : time + 1 + Int64(sim.random.below(3_000)))
    }
    // Reconnect, and let anti-entropy finish.
    try sim.healAndSettle(from: 6_000, limit: 40_000)

    var failures: [String] = []
    if Set(try sim.machines.map { try $0.store.contentDigest() }).count != 1 { failures.append("replicas differ after reconnecting") }
    for machine in sim.machines {
        for delta in ledger.acknowledged {
            let erased = delta.times.eventTime <= time
            if try machine.store.hasMessage(delta.messageId, subject: delta.subject) == erased {
                failures.append(
                    "\(machine.member.name): \(delta.messageId) \(erased ? "dated before the erasure but present" : "newer than the erasure but missing")"
                )
            }
        }
        let expected = ledger.reference.view(of: customer).map { ProfileFormat.encode($0) }
        if try machine.store.view(of: customer).map({ ProfileFormat.encode($0) }) != expected {
            failures.append("\(machine.member.name): the customer's profile differs from the reference model")
        }
    }
    return failures.prefix(3).map { "seed \(seed): \($0)" }
}

@Suite("Simulation: erasure while an edge is offline")
struct EdgeErasureTests {
    @Test func theCustomerStaysErasedEverywhereAfterTheEdgeReconnects() throws {
        var failed: [String] = []
        for seed in simulationSeeds(ci: 60) { failed += try runEdgeErasureScenario(seed: seed) }
        #expect(failed.isEmpty, "\(failed.prefix(10).joined(separator: "\n"))")
    }
}
