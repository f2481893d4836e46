import Foundation
import KithCRDT
import KithCluster
import KithCrypto
import KithJSON
import KithProfile
import KithReplication
import KithTestSupport
import Testing

@testable import KithStore

/// The rule that decides which forget records may go, and whom a node then takes data from.
@Suite("Forget compaction plan")
struct ForgetCompactionPlanTests {
    static let day: Int64 = 86_400_000
    static let bounds = ForgetCompactionPlan.Bounds(maxEventAge: 400 * day, clockBound: 500, maxOfflineWindow: 30 * day)

    static func member(_ id: UInt64, _ status: MemberStatus = .alive) -> Member {
        var member = Member(id: id, name: "n\(id)", address: "n\(id)", role: .core)
        member.status = status
        return member
    }

    func plan(
        _ members: [Member], _ contacts: [UInt64: ForgetCompactionPlan.Contact], own: VersionVector = VersionVector([2: 9, 7: 99]),
        now: Int64 = 500 * day
    ) -> ForgetCompactionPlan {
        ForgetCompactionPlan.plan(members: members, contacts: contacts, own: own, since: 0, now: now, wall: now, bounds: Self.bounds)
    }

    /// The horizon is `maxEventAge + clock bound + window + margin` before now, rounded down to
    /// a whole day: two clocks that differ by the bound agree on it except near midnight.
    @Test func theHorizonIsADayBoundaryBeforeEveryBound() {
        let now = 500 * Self.day + 3_600_000
        let horizon = Self.bounds.horizon(at: now)
        #expect(horizon % Self.day == 0)
        #expect(horizon <= now - (400 + 30 + 1) * Self.day - 500 && horizon > now - (400 + 30 + 2) * Self.day - 500)
        #expect(Self.bounds.horizon(at: now + 1_000) == horizon && Self.bounds.horizon(at: now - 1_000) == horizon)
        // Before the epoch too (negative times round down, not towards zero).
        #expect(Self.bounds.horizon(at: 10 * Self.day) % Self.day == 0 && Self.bounds.horizon(at: 10 * Self.day) < -400 * Self.day)
    }

    /// A record goes when it is older than the horizon and every member that counts holds the
    /// erasure that made it.
    @Test func aRecordGoesOnlyWhenEveryMemberThatCountsHoldsIt() {
        let now = 500 * Self.day
        let old = Self.bounds.horizon(at: now) - 1
        let contacts: [UInt64: ForgetCompactionPlan.Contact] = [
            2: .init(lastHeard: now, versions: VersionVector([7: 10, 2: 4])),
            3: .init(lastHeard: now - Self.day, versions: VersionVector([7: 6])),
        ]
        let plan = plan([Self.member(2), Self.member(3)], contacts)
        #expect(plan.mayDrop(ForgetRecord(time: old, origin: 7, sequence: 6)))
        #expect(!plan.mayDrop(ForgetRecord(time: old, origin: 7, sequence: 7)), "member 3 does not hold it")
        #expect(!plan.mayDrop(ForgetRecord(time: old, origin: 2, sequence: 1)), "member 3 holds nothing of origin 2")
        #expect(!plan.mayDrop(ForgetRecord(time: plan.horizon + 1, origin: 7, sequence: 1)), "newer than the horizon")
        #expect(!plan.mayDrop(ForgetRecord(time: old, origin: 0, sequence: 0)), "a record whose erasure is not known stays")
        #expect(plan.counted == [2, 3] && plan.uncounted.isEmpty)
        // This node's own vector counts too: it may hold a record through a tree comparison
        // before its log has brought the change (its peers wait for it then).
        #expect(
            !self.plan([Self.member(2), Self.member(3)], contacts, own: VersionVector([7: 5])).mayDrop(
                ForgetRecord(time: old, origin: 7, sequence: 6)))
    }

    /// A member silent past the window does not hold compaction back (one that left neither,
    /// once the window has passed): it is quarantined instead. One that counts but never said what it holds holds everything back,
    /// as does knowing no member.
    @Test func membersThatDoNotCountAreQuarantinedAndSilentOnesHoldBack() {
        let now = 500 * Self.day
        let old = ForgetRecord(time: Self.bounds.horizon(at: now) - 1, origin: 7, sequence: 1)
        let contacts: [UInt64: ForgetCompactionPlan.Contact] = [
            2: .init(lastHeard: now, versions: VersionVector([7: 1])),
            3: .init(lastHeard: now - 31 * Self.day, versions: VersionVector()),
            4: .init(lastHeard: now, versions: VersionVector()),
        ]
        let plan = plan([Self.member(2), Self.member(3), Self.member(4, .left)], contacts)
        #expect(!plan.mayDrop(old) && plan.counted == [2, 4] && plan.uncounted == [3], "one that left counts until the window passes")
        let later = self.plan(
            [Self.member(2), Self.member(3), Self.member(4, .left)],
            contacts.merging([2: .init(lastHeard: now + 31 * Self.day, versions: VersionVector([7: 1]))]) { $1 }, now: now + 31 * Self.day)
        #expect(later.mayDrop(old) && later.counted == [2] && later.uncounted == [3, 4])
        // More members silent past the window than heard (those that left aside): this node
        // is more likely the one that was away, and compacting would quarantine most of the
        // cluster; it waits.
        let fewHeard = self.plan(
            [Self.member(2), Self.member(3), Self.member(5)],
            contacts.merging([2: .init(lastHeard: now + 31 * Self.day, versions: VersionVector([7: 1])), 5: .init(lastHeard: 0)]) { $1 },
            now: now + 31 * Self.day)
        #expect(!fewHeard.mayDrop(old) && fewHeard.counted == [2] && fewHeard.uncounted == [3, 5])
        var withSilent = contacts
        withSilent[5] = .init(lastHeard: now, versions: nil)
        #expect(!self.plan([Self.member(2), Self.member(5)], withSilent).mayDrop(old), "member 5 counts but never said what it holds")
        #expect(self.plan([Self.member(2), Self.member(5)], withSilent).waitingOn == [5])
        #expect(!self.plan([], [:]).mayDrop(old))
        #expect(!self.plan([Self.member(3)], contacts).mayDrop(old), "no member counts")
    }

    /// A scoped site says no vector (it never pulls; all it sends is its own log): at a core it
    /// counts while heard within the window, and lets a record go once the core has read its log
    /// through within the window; silent past it, it is quarantined as any member is.
    @Test func aScopedSiteCountsOnceItsLogWasReadWithinTheWindow() {
        let now = 500 * Self.day
        let old = ForgetRecord(time: Self.bounds.horizon(at: now) - 1, origin: 7, sequence: 1)
        let site = Member(id: 6, name: "kiosk", address: "n6", role: .edge, scoped: true)
        let core: [UInt64: ForgetCompactionPlan.Contact] = [2: .init(lastHeard: now, versions: VersionVector([7: 1]))]
        func with(_ contact: ForgetCompactionPlan.Contact) -> ForgetCompactionPlan {
            plan([Self.member(2), site], core.merging([6: contact]) { $1 })
        }
        let read = with(.init(lastHeard: now, logReadAsOf: now - 29 * Self.day))
        #expect(read.mayDrop(old) && read.counted == [2, 6] && read.uncounted.isEmpty)
        #expect(!with(.init(lastHeard: now)).mayDrop(old), "its log never read since this node started")
        #expect(with(.init(lastHeard: now)).waitingOn == [6] && read.waitingOn.isEmpty)
        #expect(!with(.init(lastHeard: now, logReadAsOf: now - 31 * Self.day)).mayDrop(old), "its log last read before the window")
        // Its version vector, were one known, is not what counts: a site takes no raw log.
        #expect(with(.init(lastHeard: now, versions: VersionVector(), logReadAsOf: now)).mayDrop(old))
        let away = with(.init(lastHeard: now - 31 * Self.day, logReadAsOf: now - 31 * Self.day))
        #expect(away.mayDrop(old) && away.counted == [2] && away.uncounted == [6], "away past the window: quarantined")
        // A member that is not a core takes nothing from a site (its writes come through the
        // cores' logs): sites are not in its plan, in touch or away.
        for contact in [ForgetCompactionPlan.Contact(lastHeard: now), .init(lastHeard: now - 31 * Self.day)] {
            let edge = ForgetCompactionPlan.plan(
                members: [Self.member(2), site], contacts: core.merging([6: contact]) { $1 }, own: VersionVector([7: 1]), since: 0, now: now,
                wall: now, bounds: Self.bounds, readsSites: false)
            #expect(edge.mayDrop(old) && edge.counted == [2] && edge.uncounted.isEmpty)
        }
    }

    /// After a compaction a node trusts the members that counted and were trusted (everyone
    /// that counted, at the first) or have cleared; a member that clears through the newest
    /// record dropped is taken from again.
    @Test func theGateTrustsWhoHeldEveryDroppedRecordOrCleared() {
        let plan = ForgetCompactionPlan(horizon: 0, held: VersionVector(), uncounted: [4], counted: [2, 3])
        let first = ForgetCompactionGate.trustedAfterCompaction(plan: plan, state: ForgetCompactionState(), cleared: [])
        #expect(first == [2, 3])
        let state = ForgetCompactionState(compactedThrough: 100, trusted: [2])
        #expect(ForgetCompactionGate.trustedAfterCompaction(plan: plan, state: state, cleared: [3, 4]) == [2, 3])
        #expect(ForgetCompactionGate.takesData(from: 2, state: state, cleared: nil))
        #expect(!ForgetCompactionGate.takesData(from: 4, state: state, cleared: 99))
        #expect(ForgetCompactionGate.takesData(from: 4, state: state, cleared: 100))
        #expect(ForgetCompactionGate.takesData(from: 4, state: ForgetCompactionState(), cleared: nil), "nothing compacted: everyone")
    }
}

/// Forget compaction in the store: what goes, the digest tree, and a quarantined node's drop.
@Suite("Forget compaction in the store")
struct ForgetCompactionStoreTests {
    static let parser = SegmentMessageParser()

    static func message(_ json: String, at time: Int64) throws -> ProfileDelta {
        try parser.parse(try JSONParser.parse(Array(json.utf8)), receivedAt: time)
    }

    /// Erasures name the change that made them, on the erasing node and where they are applied;
    /// compaction drops exactly the records the decision allows, keeps the digest tree true,
    /// and records whom the node trusts.
    @Test func compactionDropsWhatTheDecisionAllows() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Simulation.secret))
        for n in 1...3 {
            try store.apply([try Self.message(#"{"type":"identify","userId":"u-\#(n)","timestamp":"2026-01-01T00:00:00Z"}"#, at: 1_000)])
        }
        _ = try store.erase(Identifier(kind: .userId, value: "u-1")!, requestedAt: 2_000)
        _ = try store.erase(Identifier(kind: .userId, value: "u-2")!, requestedAt: 9_000)
        let replica = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Simulation.secret))
        try replica.applyReplicated(try store.changes(after: 0, limit: 100), from: 5, through: nil)
        let key1 = store.engine.hasher.forgetKeyBytes(for: Identifier(kind: .userId, value: "u-1")!)
        let records = try store.documentStates(for: [key1]).compactMap(\.forgotten)
        #expect(records.count == 1 && records[0].origin == 5 && records[0].hasOrigin)
        #expect(try replica.documentStates(for: [key1]).compactMap(\.forgotten) == records, "the replica names the same change")
        #expect(try store.contentDigest() == replica.contentDigest())

        let held = VersionVector([5: records[0].sequence])
        let step = try store.compactForgetRecords(horizon: 5_000, held: held, trusted: [6], scan: 10, limit: 10)
        #expect(step == ForgetCompactionStep(dropped: 1, read: 2, passEnded: true))
        #expect(try store.erased(among: [key1]).isEmpty)
        #expect(try store.forgetCompactionState() == ForgetCompactionState(compactedThrough: records[0].time, trusted: [6]))
        let tree = try store.treeNodes()
        #expect(tree.stored == tree.expected, "the digest tree follows the dropped record")
        // The replica, which has not dropped it yet, offers it back in a comparison: not taken.
        #expect(try store.join(replica.documentStates(for: [key1])) == 0 && store.erased(among: [key1]).isEmpty)
        // Nothing more under the same decision; the later erasure waits for its horizon.
        #expect(try store.compactForgetRecords(horizon: 5_000, held: VersionVector([5: 100]), trusted: [6], scan: 10, limit: 10).dropped == 0)
        #expect(try store.compactForgetRecords(horizon: 10_000, held: VersionVector([5: 100]), trusted: [6], scan: 10, limit: 10).dropped == 1)
    }

    /// A pass goes over the forget set in steps that each read at most `scan` records and drop
    /// at most `limit`, from where the last stopped; the step that reaches the end ends it.
    @Test func aPassGoesInBoundedSteps() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Simulation.secret))
        for n in 1...7 { _ = try store.erase(Identifier(kind: .userId, value: "u-\(n)")!, requestedAt: Int64(n) * 1_000) }
        let everything = VersionVector([5: 100])
        // Horizon 4.5 s: the erasures at 1–4 s may go, 5–7 s stay. Steps of three records.
        var steps: [ForgetCompactionStep] = []
        repeat {
            steps.append(try store.compactForgetRecords(horizon: 4_500, held: everything, trusted: [], scan: 3, limit: 10))
        } while !steps.last!.passEnded && steps.count < 10
        #expect(steps.map(\.read) == [3, 3, 1] && steps.map(\.dropped).reduce(0, +) == 4)
        #expect(try store.read { reader in try reader.count(.forget) } == 3)
        // A drop limit of one stops a step early; the pass goes on from there.
        for n in 8...9 { _ = try store.erase(Identifier(kind: .userId, value: "u-\(n)")!, requestedAt: 100) }
        let first = try store.compactForgetRecords(horizon: 4_500, held: everything, trusted: [], scan: 10, limit: 1)
        #expect(first.dropped == 1 && !first.passEnded)
        let second = try store.compactForgetRecords(horizon: 4_500, held: everything, trusted: [], scan: 10, limit: 1)
        #expect(second.dropped == 1)
        #expect(try store.read { reader in try reader.count(.forget) } == 3)
        let tree = try store.treeNodes()
        #expect(tree.stored == tree.expected)
    }

    /// A stored record of the time alone (written before records named their change) reads as
    /// one whose erasure is not known, which is never compacted; a record with its change reads
    /// back whole; a sequence of 0 with an origin is refused as damage.
    @Test func recordsReadBackWithTheirChangeAndOldOnesWithout() throws {
        var writer = BinaryWriter(capacity: 10)
        writer.write(signed: 1_760_000_000_000)
        let old = try decodeForgetRecord(writer.bytes)
        #expect(old == ForgetRecord(time: 1_760_000_000_000, origin: 0, sequence: 0) && !old.hasOrigin)
        #expect(!old.isCompactable(horizon: .max, held: VersionVector([0: 1, 1: 1])))
        let named = ForgetRecord(time: -3, origin: 0xFFFF_FFFF_FFFF_FFFF, sequence: 12)
        #expect(try decodeForgetRecord(encodeForgetRecord(named)) == named)
        #expect(throws: StoreCorruption.self) { try decodeForgetRecord(writer.bytes + [5, 0]) }
        #expect(ForgetRecord(time: 5, origin: 1, sequence: 2).joined(with: ForgetRecord(time: 4, origin: 9, sequence: 9)).origin == 1)
        #expect(ForgetRecord(time: 5, origin: 1, sequence: 2).joined(with: ForgetRecord(time: 5, origin: 3, sequence: 1)).origin == 3)
    }

    /// A quarantined node drops everything dated at or before the time it is told, about
    /// anyone, keeping what is newer, and says so; the digest tree stays true.
    @Test func clearingDropsEverythingDatedThroughTheFloor() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Simulation.secret))
        let old = try Self.message(
            #"{"type":"identify","userId":"u-1","anonymousId":"a-1","traits":{"city":"Leeds"},"timestamp":"1970-01-01T00:00:01Z"}"#, at: 1_000)
        let new = try Self.message(#"{"type":"track","userId":"u-1","event":"Order Completed","timestamp":"1970-01-01T00:00:05Z"}"#, at: 5_000)
        let other = try Self.message(#"{"type":"identify","userId":"u-2","timestamp":"1970-01-01T00:00:02Z"}"#, at: 2_000)
        try store.apply([old, new, other])
        // In steps of 100 buckets: eleven, the first one dropping the logged changes too.
        var steps = 1
        while try !store.clearForQuarantine(through: 3_000, buckets: 100, identifiers: 100) { steps += 1 }
        #expect(steps == 11)
        #expect(try !store.hasMessage(old.messageId, subject: old.subject) && !store.hasMessage(other.messageId, subject: other.subject))
        #expect(try store.hasMessage(new.messageId, subject: new.subject))
        #expect(try store.view(of: Identifier(kind: .anonymousId, value: "a-1")!) == nil, "the link asserted at 1 s went with its message")
        #expect(try store.forgetCompactionState().clearedThrough == 3_000)
        #expect(try store.clearForQuarantine(through: 2_000, buckets: 1, identifiers: 1), "cleared through a later time already")
        #expect(
            try store.changes(after: 0, limit: 100).allSatisfy { entry in
                if case .message(let delta) = entry.change { return delta.times.eventTime > 3_000 }
                return true
            })
        let tree = try store.treeNodes()
        #expect(tree.stored == tree.expected)
        // A store given only the newer message holds the same rows.
        let expected = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Simulation.secret))
        try expected.apply([new])
        #expect(try store.view(of: new.subject).map(ProfileFormat.encode) == expected.view(of: new.subject).map(ProfileFormat.encode))
        // A higher floor told in the middle of a clearing starts it over with that floor.
        for _ in 0..<3 { #expect(try !store.clearForQuarantine(through: 4_000, buckets: 100, identifiers: 100)) }
        var rest = 1
        while try !store.clearForQuarantine(through: 6_000, buckets: 100, identifiers: 100) { rest += 1 }
        #expect(try rest == 11 && store.forgetCompactionState().clearedThrough == 6_000)
        #expect(try !store.hasMessage(new.messageId, subject: new.subject), "dated 5 s: dropped through 6 s")
    }
}

extension ForgetCompactionStoreTests {
    /// A clearing step takes at most its number of identifiers, however many one bucket holds:
    /// with one a step, a store of three identifiers (two of them linked, so cleared together)
    /// takes more than one step, and ends the same as clearing in one.
    @Test func aClearingStepIsBoundedByIdentifiers() throws {
        let messages = try [
            Self.message(#"{"type":"identify","userId":"u-1","anonymousId":"a-1","timestamp":"1970-01-01T00:00:01Z"}"#, at: 1_000),
            Self.message(#"{"type":"identify","userId":"u-2","timestamp":"1970-01-01T00:00:02Z"}"#, at: 2_000),
            Self.message(#"{"type":"track","userId":"u-2","event":"Visit","timestamp":"1970-01-01T00:00:09Z"}"#, at: 9_000),
        ]
        func store() throws -> MemoryProfileStore {
            let store = MemoryProfileStore(configuration: StoreConfiguration(node: 5, forgetKeySecret: Simulation.secret))
            try store.apply(messages)
            return store
        }
        let stepped = try store(), whole = try store()
        var steps = 1
        while try !stepped.clearForQuarantine(through: 5_000, buckets: 1_024, identifiers: 1) { steps += 1 }
        #expect(steps >= 2)
        #expect(try whole.clearForQuarantine(through: 5_000, buckets: 1_024, identifiers: 1_000))
        #expect(try stepped.contentDigest() == whole.contentDigest())
        #expect(
            try !stepped.hasMessage(messages[0].messageId, subject: messages[0].subject)
                && stepped.hasMessage(messages[2].messageId, subject: messages[2].subject))
    }
}

/// Erasures early in a run, forget records compacted as their horizon passes, and one member
/// away past `maxOfflineWindow` taking writes (some about customers erased meanwhile). When it
/// comes back its peers, which compacted while it did not count, quarantine it: it drops what
/// is dated at or before their compaction, and only then do they take its data.
///
/// With `site`, the last member is a scoped site (a kiosk holding the customers it took messages
/// about, and `u-0`): in about half the seeds it is the member away, otherwise it stays in touch
/// (or is the deaf one) and must not hold compaction back for good. It must end holding exactly
/// what the cores' projected documents say, forget records included.
func runForgetCompactionScenario(seed: UInt64, site: Bool = false) throws -> (
    failures: [String], compacted: Int, cleared: Int, refusedForAge: Int
) {
    var setup = SplitMix64(seed: seed ^ 0xF0C)
    // A simulated day is a second: horizon = now − (3 + 0.5 + 4 + 0.5) s, rounded down to a second.
    let window: Int64 = 4_000
    let bounds = ForgetCompactionPlan.Bounds(
        maxEventAge: 3_000, clockBound: Simulation.clockSettings.maximumOffset, maxOfflineWindow: window, margin: 500, quantum: 1_000)
    // Periodic tree comparisons on in every seed: a record dropped by some nodes while a member
    // did not count, and kept by others once it counts again behind them, is taken back only by
    // a comparison (a node takes back a record its last decision would no longer drop).
    let (nodes, edges) = (3 + setup.below(2), setup.below(2))
    let kiosk = SiteSettings(
        scope: .only([
            .seen(node: UInt64(nodes + edges + 1), withinMillis: 3_600_000), .identifiers([Identifier(kind: .userId, value: "u-0")!]),
        ]),
        purposes: ["support"])
    let sim = try Simulation(
        seed: seed, nodes: nodes + (site ? 1 : 0), edges: edges + (site ? 1 : 0), antiEntropy: true, maxOfflineWindow: window,
        forgetCompaction: bounds, sites: site ? [kiosk] : [])
    sim.faults = .init(lossPercent: setup.below(10), duplicatePercent: setup.below(10), maximumDelay: 5 + Int64(setup.below(40)))
    var generator = WorkloadGenerator(seed: seed, customers: 20)
    generator.sendsSentAt = seed % 2 == 0
    var ledger = Ledger()
    let parser = SegmentMessageParser(sources: WorkloadGenerator.identifierSources, maximumAge: bounds.maxEventAge)
    let away = sim.machines.count - 1 - setup.below(2)
    let (leaves, returns): (Int64, Int64) = (3_000, 18_000)

    // In half the seeds another member goes deaf for 11 s: it hears nobody while everyone hears
    // it (its pulls say how far it has read), so it counts without holding recent erasures and
    // must hold their compaction back.
    let deaf = seed % 2 == 0 ? (away + 1) % sim.machines.count : nil
    // Now and then a machine stops and starts again 0.2–1 s later (its compaction state, its
    // trust and a clearing under way must survive), one at a time.
    var restartAt: (machine: Int, at: Int64)?
    func step(_ sim: Simulation) throws {
        try clientStep(sim, &generator, parser, &ledger)
        if let (machine, at) = restartAt, sim.now >= at {
            if sim.machines[machine].node == nil { try sim.start(sim.machines[machine]) }
            restartAt = nil
        } else if restartAt == nil, sim.random.chance(2) {
            let machine = sim.random.below(sim.machines.count)
            sim.crash(sim.machines[machine])
            restartAt = (machine, sim.now + 200 + Int64(sim.random.below(800)))
        }
    }
    try sim.run(until: 2_000, between: step)
    for other in sim.machines.indices where other != deaf { if let deaf { sim.blocked.insert([other, deaf]) } }
    try sim.run(until: leaves, between: step)
    for other in sim.machines.indices where other != away {
        sim.blocked.insert([away, other])
        sim.blocked.insert([other, away])
    }
    try sim.run(until: 13_000, between: step)
    for other in sim.machines.indices where other != deaf && other != away { if let deaf { sim.blocked.remove([other, deaf]) } }
    try sim.run(until: returns, between: step)
    let awayMachine = sim.machines[away]
    let returnedAt = sim.clock(awayMachine)
    // What only the away member holds as it comes back: its writes that may be lost.
    var onlyAway: Set<Int> = []
    // (A scoped site's copy is not one: nothing it holds but its own log leaves it.)
    for (index, delta) in ledger.acknowledged.enumerated() where ledger.acknowledgedBy[index] == away {
        if try !sim.machines.contains(where: { machine in
            try machine.index != away && machine.member.holdsEverything && copyHeld(delta, by: machine.store)
        }) {
            onlyAway.insert(index)
        }
    }
    try sim.heal()
    try sim.run(until: returns + 4_000, between: step)
    // Quiet long enough for every erasure to pass every node's horizon and be compacted.
    try sim.healAndSettle(from: sim.now)
    try sim.run(until: sim.now + 12_000)
    try sim.healAndSettle(from: sim.now)

    var failures: [String] = []
    // The loss contract: what the away member took and had not replicated, dated at or before
    // what it cleared through, is gone; nothing else. Its clearing point is at least the window
    // before its return, so every write it took within the window is kept.
    let cleared = try awayMachine.store.forgetCompactionState().clearedThrough
    if let cleared, cleared > returnedAt - window {
        failures.append("\(awayMachine.member.name) cleared through \(returnedAt - cleared) ms before its return (at least \(window))")
    }
    var checked = Ledger()
    checked.erasures = ledger.erasures
    // Unlinks are stamped by their node's clock, with the node's name and the simulated time.
    checked.unlinks = ledger.unlinks.filter { unlink in
        let parts = unlink.stamp.tiebreak.split(separator: "-")
        guard parts.count == 2, parts[0] == awayMachine.member.name, let at = Int64(parts[1]) else { return true }
        // Lost unless it reached a peer before it was dropped (as a message may).
        return !(at >= leaves - 1_000 && at <= returns && unlink.stamp.time <= (cleared ?? .min))
            || (try? unlinkHeld(unlink.a, unlink.b, unlink.stamp, by: sim.machines[0].store)) == true  // a read of the memory store: it does not fail
    }
    for (index, delta) in ledger.acknowledged.enumerated() {
        // Taken while cut off (a copy of a message others hold may be one), or earlier but held nowhere else.
        let onlyThere =
            ledger.acknowledgedBy[index] == away
            && ((leaves...returns).contains(ledger.acknowledgedAt[index]) || onlyAway.contains(index))
        // Such a copy may still be held: before it was dropped it may have reached a peer that
        // had compacted nothing (and so took data from anyone, its forget records intact).
        let lost = try onlyThere && delta.times.eventTime <= (cleared ?? .min) && !copyHeld(delta, by: sim.machines[0].store)
        if !lost { checked.acknowledge(delta, at: ledger.acknowledgedAt[index], by: ledger.acknowledgedBy[index]) }
    }
    for unlink in checked.unlinks { checked.reference.removeLink(unlink.a, unlink.b, stamp: unlink.stamp, hasher: ledger.hasher) }
    for erasure in ledger.erasures {
        checked.reference.applyErasure(forgetKeys: erasure.keys.map(Crypto.hex), time: erasure.boundary, hasher: ledger.hasher)
    }
    failures += try check(sim, checked, seed: seed)
    if site { failures += try siteHoldsWhatTheCoresSay(sim) }
    if ProcessInfo.processInfo.environment["KITH_SIM_VERBOSE"] != nil {
        let first = try replicatedRows(sim.machines[0].store)
        for machine in sim.machines.dropFirst() {
            let theirs = try replicatedRows(machine.store)
            for key in Set(first.keys).union(theirs.keys).sorted(by: { $0.lexicographicallyPrecedes($1) }) where first[key] != theirs[key] {
                print(
                    "n1 vs \(machine.member.name): row \(Crypto.hex(Array(key.prefix(40)))) \(first[key]?.count ?? -1) / \(theirs[key]?.count ?? -1) bytes"
                )
            }
        }
        print("away \(awayMachine.member.name) cleared \(cleared.map { $0 - Simulation.epoch } ?? -1) returned \(returnedAt - Simulation.epoch)")
        for index in sim.siteSettings.keys {
            let site = sim.machines[index]
            print("site \(site.member.name) extent \(try site.store.logExtent()) plan \(String(describing: site.node?.logTruncationPlan))")
            for (member, state) in site.node?.peerStates ?? [] {
                print("  \(member.name) \(member.status) cursor \(state.cursor) versions \(String(describing: state.versions))")
            }
            for machine in sim.machines where machine.member.holdsEverything {
                let state = machine.node?.peerStates.first { $0.member.id == site.member.id }?.state
                print(
                    "  at \(machine.member.name): takes data \(try machine.node?.takesData(from: site.member.id) ?? false) cleared \(String(describing: state?.cleared)) read as of \(String(describing: state?.logReadAsOf)) truncated past \(String(describing: state?.truncatedPast)) pull sent \(String(describing: state?.pullSentAt)) completed \(String(describing: state?.lastPullCompleted))"
                )
            }
        }
        for machine in sim.machines {
            print("\(machine.member.name) \(try machine.store.forgetCompactionState()) \(machine.node.map { "\($0.counters)" } ?? "down")")
            print("   plan \(machine.node?.forgetCompactionPlan.map { "\($0)" } ?? "-") vv \(try machine.store.versionVector()) now \(sim.now)")
        }
        for identifier in checked.reference.identifiers.sorted() {
            let expected = checked.reference.view(of: identifier)
            let held = try sim.machines[0].store.view(of: identifier)
            if held.map(ProfileFormat.encode) != expected.map(ProfileFormat.encode) {
                print("\(identifier):\n  expected \(String(describing: expected))\n  held     \(String(describing: held))")
                let forgetKey = ledger.hasher.forgetKeyBytes(for: identifier)
                for erasure in ledger.erasures where erasure.keys.contains(forgetKey) {
                    print("  erased at \(erasure.boundary - Simulation.epoch) by n\(erasure.machine + 1) keys \(erasure.keys.count)")
                }
                for machine in sim.machines {
                    let rows: [String] = try machine.store.read { reader in
                        var found: [String] = []
                        try reader.scan(.documents, prefix: documentKey(identifier.key, .edge)) { key, value in
                            found.append(
                                "edge \(Identifier(key: RowKey(stored: key).suffix).map { "\($0)" } ?? "?") \(try ProfileFormat.decode(EdgeSummary.self, from: value))"
                            )
                            return .next
                        }
                        return found
                    }
                    let record = try machine.store.documentStates(for: [forgetKey]).first?.forgotten
                    print(
                        "  \(machine.member.name): \(rows) forgotten \(record.map { "\($0.time - Simulation.epoch) by \($0.origin)/\($0.sequence)" } ?? "-")"
                    )
                    for (index, delta) in ledger.acknowledged.enumerated() where delta.subject == identifier && onlyAway.contains(index) {
                        let row: String = try machine.store.read { reader in
                            guard let bytes = try reader.get(.documents, documentKey(identifier.key, .ledger, delta.messageId.utf8)) else {
                                return "-"
                            }
                            return "\(try ProfileFormat.decode(LedgerRow.self, from: bytes))"
                        }
                        print("     row \(delta.messageId): \(row)")
                    }
                }
                for unlink in ledger.unlinks where unlink.a == identifier || unlink.b == identifier {
                    print(
                        "  unlink \(unlink.a)–\(unlink.b) \(unlink.stamp) kept \(checked.unlinks.contains { $0.stamp == unlink.stamp }) held \(try unlinkHeld(unlink.a, unlink.b, unlink.stamp, by: sim.machines[0].store))"
                    )
                }
                for (index, delta) in ledger.acknowledged.enumerated() where delta.links.contains(identifier) {
                    print(
                        "  linking copy \(delta.messageId) about \(delta.subject) at \(delta.times.eventTime - Simulation.epoch) by n\(ledger.acknowledgedBy[index] + 1) acked \(ledger.acknowledgedAt[index]) onlyAway \(onlyAway.contains(index)) held \(try copyHeld(delta, by: sim.machines[0].store)) links \(delta.links)"
                    )
                }
                for (index, delta) in ledger.acknowledged.enumerated() where delta.subject == identifier {
                    print(
                        "  copy \(delta.messageId) at \(delta.times.eventTime - Simulation.epoch) by n\(ledger.acknowledgedBy[index] + 1) acked \(ledger.acknowledgedAt[index]) onlyAway \(onlyAway.contains(index)) held \(try copyHeld(delta, by: sim.machines[0].store))"
                    )
                }
            }
        }
    }
    // Erased data never comes back: not even what the lost writes held.
    for machine in sim.machines {
        for delta in ledger.acknowledged {
            let key = ledger.hasher.forgetKeyBytes(for: delta.subject)
            guard let boundary = ledger.erasures.filter({ $0.keys.contains(key) }).map(\.boundary).max(), delta.times.eventTime <= boundary
            else { continue }
            if try machine.store.hasMessage(delta.messageId, subject: delta.subject)
                && !ledger.acknowledged.contains(where: {
                    $0.messageId == delta.messageId && $0.times.eventTime > boundary
                })
            {
                failures.append("\(machine.member.name): message \(delta.messageId) erased but present")
                break
            }
        }
    }
    let compacted = sim.machines.compactMap { $0.node?.counters.forgetRecordsCompacted }.reduce(0, +)
    // From the store: the node's counters start again when it restarts.
    let clears = cleared == nil ? 0 : 1
    return (failures, compacted, clears, ledger.refusedForAge)
}

/// Whether `store` holds this copy of a message (the copy dated as `delta` is).
func copyHeld(_ delta: ProfileDelta, by store: MemoryProfileStore) throws -> Bool {
    try store.read { reader in
        guard let bytes = try reader.get(.documents, documentKey(delta.subject.key, .ledger, delta.messageId.utf8)) else { return false }
        return try ProfileFormat.decode(LedgerRow.self, from: bytes).copyTimes.contains(delta.times.eventTime)
    }
}

/// Whether `store` holds the removal of the link between `a` and `b` stamped `stamp`.
func unlinkHeld(_ a: Identifier, _ b: Identifier, _ stamp: LWWStamp, by store: MemoryProfileStore) throws -> Bool {
    guard let edge = LinkEdge(a, b) else { return false }
    return try store.read { reader in
        guard let bytes = try reader.get(.documents, documentKey(edge.low.key, .edge, edge.high.key)) else { return false }
        return try ProfileFormat.decode(EdgeSummary.self, from: bytes).removedAt == stamp
    }
}

@Suite("Forget compaction in the simulation")
struct ForgetCompactionSimulationTests {
    /// The same with a scoped site among the members, away past the window in about half the
    /// seeds: it is quarantined through its syncs and clears; in touch, it lets records go once
    /// the cores have read its log.
    @Test func nothingErasedComesBackWithAScopedSiteAmongTheMembers() throws {
        var compacted = 0, cleared = 0
        let seeds = try expectEverySeedPasses(ci: 20, replay: "nothingErasedComesBackWithAScopedSite") { seed in
            let (failures, dropped, clears, _) = try runForgetCompactionScenario(seed: seed, site: true)
            compacted += dropped
            cleared += clears
            return failures
        }
        #expect(compacted > seeds * 5 && cleared >= seeds / 2, "forget records compacted \(compacted), quarantines cleared \(cleared)")
    }

    @Test func nothingErasedComesBackAsForgetRecordsGo() throws {
        var compacted = 0, cleared = 0, refusedForAge = 0
        let seeds = try expectEverySeedPasses(ci: 40, replay: "ForgetCompactionSimulationTests") { seed in
            let (failures, dropped, clears, refused) = try runForgetCompactionScenario(seed: seed)
            compacted += dropped
            cleared += clears
            refusedForAge += refused
            return failures
        }
        if ProcessInfo.processInfo.environment["KITH_SIM_VERBOSE"] != nil { print("compacted \(compacted) cleared \(cleared)") }
        #expect(
            compacted > seeds * 5 && cleared >= seeds / 2,  // seeds whose away member cleared
            "forget records compacted \(compacted), quarantines cleared \(cleared), messages refused for age \(refusedForAge)")
    }
}

/// Settings under which a node compacts within seconds: a 5 s window, `maxEventAge` 2 s, a
/// one-second "day", no margin; plans every 100 ms.
func compactingSettings() -> ReplicationSettings {
    var settings = ReplicationSettings()
    settings.truncationInterval = 100
    settings.forgetCompactionInterval = 100
    settings.maxOfflineWindow = 5_000
    settings.forgetCompaction = ForgetCompactionPlan.Bounds(maxEventAge: 2_000, clockBound: 500, maxOfflineWindow: 5_000, margin: 0, quantum: 1_000)
    return settings
}

/// A store of node 1 that erased `u-1` at 1 s: the erased forget key and its record.
func storeWithOneErasure() throws -> (store: MemoryProfileStore, key: [UInt8], erasure: ForgetRecord) {
    let store = MemoryProfileStore(configuration: StoreConfiguration(node: 1, forgetKeySecret: Simulation.secret))
    _ = try store.erase(Identifier(kind: .userId, value: "u-1")!, requestedAt: 1_000)
    let key = store.engine.hasher.forgetKeyBytes(for: Identifier(kind: .userId, value: "u-1")!)
    return (store, key, try #require(store.documentStates(for: [key]).first?.forgotten))
}

/// Forget compaction as one node carries it out: it drops a record only once every member that
/// counts says (in its pulls) it holds the erasure, and then answers a member that did not
/// count with the time to drop through, taking nothing from it until it has.
@Suite("Forget compaction in a node")
struct ForgetCompactionNodeTests {
    @Test func aNodeWaitsForEveryMemberThenQuarantinesTheOnesThatDidNotCount() throws {
        let (store, key, erasure) = try storeWithOneErasure()
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(
            store: store, me: Member(id: 1, name: "n1", address: "n1", role: .core), seeds: [], settings: compactingSettings(), seed: 1
        ) { sent.append(($0, $1)) }
        try node.tick(now: 1)  // silence is counted from here
        let (peer, gone) = (Member(id: 2, name: "n2", address: "n2", role: .core), Member(id: 3, name: "n3", address: "n3", role: .edge))
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer, gone])), from: 2, address: "n2", now: 0)
        // Past the horizon (1 s + 7.5 s), n2 counts and says it lacks the erasure; n3 has been
        // silent past the window.
        try node.receive(.pull(cursor: 0, versions: VersionVector(), budget: 1_024, request: 1), from: 2, address: "n2", now: 9_900)
        try node.tick(now: 10_000)
        #expect(try store.erased(among: [key]) == [key], "n2 does not hold the erasure yet")
        try node.receive(
            .pull(cursor: 1, versions: VersionVector([1: erasure.sequence]), budget: 1_024, request: 2), from: 2, address: "n2", now: 10_050)
        try node.tick(now: 10_200)
        #expect(try store.erased(among: [key]).isEmpty && node.counters.forgetRecordsCompacted == 1)
        #expect(try store.forgetCompactionState() == ForgetCompactionState(compactedThrough: erasure.time, trusted: [2]))

        // n3 comes back: its pull is answered with the time to drop through, its push is not taken.
        sent.removeAll()
        try node.receive(.pull(cursor: 0, versions: VersionVector(), budget: 1_024, request: 7), from: 3, address: "n3", now: 10_300)
        guard case .logTruncated(_, 7, let dropThrough)? = sent.last?.1 else { Issue.record("answered \(sent)"); return }
        #expect(dropThrough == erasure.time)
        let delta = try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-1"}"#.utf8)), receivedAt: 500)
        try node.receive(
            .push(previous: 0, entries: [ChangeEntry(sequence: 1, origin: 3, originSequence: 1, change: .message(delta))]), from: 3, address: "n3",
            now: 10_310)
        #expect(try !store.hasMessage(delta.messageId, subject: delta.subject) && node.counters.quarantinedMessagesRefused == 2)
        // Once it says it dropped through that time, it is read from and compared with again.
        sent.removeAll()
        try node.receive(
            .pull(cursor: 0, versions: VersionVector(), budget: 1_024, request: 8, cleared: erasure.time), from: 3, address: "n3", now: 10_400)
        #expect(!sent.contains { if case .logTruncated(_, _, .some) = $0.1 { true } else { false } })
        try node.receive(
            .push(previous: 0, entries: [ChangeEntry(sequence: 1, origin: 3, originSequence: 1, change: .message(delta))]), from: 3, address: "n3",
            now: 10_410)
        #expect(try store.hasMessage(delta.messageId, subject: delta.subject))
    }

    /// Told to drop through a time, a node does so once and says so in its next pulls.
    @Test func aQuarantinedNodeClearsAndSaysSo() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 3, forgetKeySecret: Simulation.secret))
        let old = try SegmentMessageParser().parse(
            try JSONParser.parse(Array(#"{"type":"identify","userId":"u-1","timestamp":"1970-01-01T00:00:01Z"}"#.utf8)), receivedAt: 1_000)
        try store.apply([old])
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(store: store, me: Member(id: 3, name: "n3", address: "n3", role: .edge), seeds: [], seed: 1) {
            sent.append(($0, $1))
        }
        let peer = Member(id: 1, name: "n1", address: "n1", role: .core)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: 1, address: "n1", now: 0)
        // A time within the window of this node's clock cannot come from the rule: refused.
        try node.receive(.logTruncated(through: 5, request: 1, dropThrough: 2_000), from: 1, address: "n1", now: 10)
        #expect(try store.hasMessage(old.messageId, subject: old.subject) && node.counters.quarantineClearsRefused == 1)
        let wall = 2_000 + ReplicationSettings().maxOfflineWindow
        try node.receive(.logTruncated(through: 5, request: 1, dropThrough: 2_000), from: 1, address: "n1", now: 11, wall: wall)
        #expect(try !store.hasMessage(old.messageId, subject: old.subject) && node.counters.quarantinesCleared == 1)
        try node.pull(from: peer, now: 20)
        guard case .pull(_, _, _, _, let cleared)? = sent.last?.1 else { Issue.record("sent \(sent)"); return }
        #expect(cleared == 2_000)
    }
}

/// Forget compaction with scoped sites, as one core and one site carry it out: the core waits
/// until it has read a site's log through, quarantines a site silent past the window in its
/// answer to the site's sync, and reads and answers it again once it says it cleared; the site
/// clears when told, takes nothing in meanwhile, and says so in its next sync.
@Suite("Forget compaction with scoped sites")
struct ForgetCompactionSiteTests {
    @Test func aCoreWaitsUntilItReadASitesLogAndQuarantinesOneAwayPastTheWindow() throws {
        let (store, key, erasure) = try storeWithOneErasure()
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(
            store: store, me: Member(id: 1, name: "n1", address: "n1", role: .core), seeds: [], settings: compactingSettings(), seed: 1
        ) { sent.append(($0, $1)) }
        try node.tick(now: 1)
        let peer = Member(id: 2, name: "n2", address: "n2", role: .core)
        let kiosk = Member(id: 6, name: "n6", address: "n6", role: .edge, scoped: true)
        let away = Member(id: 7, name: "n7", address: "n7", role: .edge, scoped: true)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer, kiosk, away])), from: 2, address: "n2", now: 0)
        func sync(_ site: Member, request: UInt64, cleared: Int64? = nil, at now: Int64) throws -> PeerMessage? {
            sent.removeAll()
            try node.receive(
                .siteSync(request: request, scope: .everything, purposes: [], summary: HeldDocument.summary(of: []), page: nil, cleared: cleared),
                from: site.id, address: site.address, now: now)
            return sent.first { $0.0 == site.address }?.1
        }
        // n2 holds the erasure; the kiosk syncs, but its log has not been read.
        try node.receive(
            .pull(cursor: 1, versions: VersionVector([1: erasure.sequence]), budget: 1_024, request: 1), from: 2, address: "n2", now: 9_900)
        _ = try sync(kiosk, request: 1, at: 9_950)
        try node.tick(now: 10_000)
        #expect(try store.erased(among: [key]) == [key], "the kiosk's log is not read yet")
        // A chain of pulls from the kiosk ends with nothing more: its log is read as of its start.
        let request = try node.pull(from: kiosk, now: 10_010)
        try node.receive(
            .changes(from: 0, through: 0, entries: [], more: false, ahead: [], request: request), from: 6, address: "n6", now: 10_020)
        #expect(node.peerStates.first { $0.member.id == 6 }?.state.logReadAsOf == 10_010)
        try node.tick(now: 10_200)
        #expect(try store.erased(among: [key]).isEmpty && node.counters.forgetRecordsCompacted == 1)
        #expect(try store.forgetCompactionState().trusted == [2, 6], "n7, silent past the window, did not count")

        // n7 comes back: its sync is answered with the time to drop through and nothing else; its
        // log is not read and its pushes not taken.
        guard case .siteUpdate(_, let components, let purge, _, _, let dropThrough)? = try sync(away, request: 1, at: 10_300) else {
            Issue.record("answered \(sent)")
            return
        }
        #expect(components.isEmpty && purge.isEmpty && dropThrough == erasure.time)
        let delta = try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-7"}"#.utf8)), receivedAt: 9_000)
        let push = PeerMessage.push(previous: 0, entries: [ChangeEntry(sequence: 1, origin: 7, originSequence: 1, change: .message(delta))])
        try node.receive(push, from: 7, address: "n7", now: 10_310)
        #expect(try !node.takesData(from: 7) && !store.hasMessage(delta.messageId, subject: delta.subject))
        // Once it says it cleared through that time, it is answered and read again.
        guard case .siteUpdate(_, _, _, _, _, let none)? = try sync(away, request: 2, cleared: erasure.time, at: 11_100) else {
            Issue.record("answered \(sent)")
            return
        }
        #expect(none == nil && node.counters.quarantinedMessagesRefused == 2)
        try node.receive(push, from: 7, address: "n7", now: 11_110)
        #expect(try node.takesData(from: 7) && store.hasMessage(delta.messageId, subject: delta.subject))
    }

    @Test func aSiteToldToDropClearsTakesNothingMeanwhileAndSaysSo() throws {
        let store = MemoryProfileStore(configuration: StoreConfiguration(node: 6, forgetKeySecret: Simulation.secret))
        let old = try SegmentMessageParser().parse(
            try JSONParser.parse(Array(#"{"type":"identify","userId":"u-1","timestamp":"1970-01-01T00:00:01Z"}"#.utf8)), receivedAt: 1_000)
        try store.apply([old])
        var settings = compactingSettings()
        settings.site = SiteSettings(scope: .everything, purposes: [])
        settings.clearingIdentifiers = 1
        var sent: [(String, PeerMessage)] = []
        // Writes wait until the test runs them: a clearing in steps is under way meanwhile.
        var queued: [() throws -> Void] = []
        let node = try ClusterNode(
            store: store, me: Member(id: 6, name: "n6", address: "n6", role: .edge, scoped: true), seeds: [], settings: settings, seed: 1,
            write: { body, done in queued.append { try done(body()) } }
        ) { sent.append(($0, $1)) }
        let core = Member(id: 1, name: "n1", address: "n1", role: .core)
        try node.receive(.membership(MembershipMessage(sender: core, kind: .join, updates: [core])), from: 1, address: "n1", now: 0)
        func lastSync() -> (request: UInt64, cleared: Int64?)? {
            for (_, message) in sent.reversed() { if case .siteSync(let request, _, _, _, _, let cleared) = message { return (request, cleared) } }
            return nil
        }
        let wall = 2_000 + settings.maxOfflineWindow
        try node.tick(now: 10, wall: wall)
        let first = try #require(lastSync())
        #expect(first.cleared == nil)
        try node.receive(
            .siteUpdate(request: first.request, components: [], purge: [], more: false, dropThrough: 2_000), from: 1, address: "n1", now: 20,
            wall: wall)
        // While it clears, no sync goes.
        sent.removeAll()
        try node.tick(now: 2_000, wall: wall)
        #expect(lastSync() == nil)
        while !queued.isEmpty { try queued.removeFirst()() }
        #expect(try !store.hasMessage(old.messageId, subject: old.subject) && node.counters.quarantinesCleared == 1)
        try node.tick(now: 4_000, wall: wall)
        #expect(lastSync()?.cleared == 2_000)
    }
}

extension ForgetCompactionNodeTests {
    /// A node pulls a peer it quarantined all the same, refusing what it answers, no more often
    /// than any pull: its pulls say how far it cleared and their answers tell it to clear, so
    /// two members that each quarantined the other do not wait for each other for good (the
    /// simulation with a scoped site found it: an edge back from away compacted before it
    /// heard the cores, and neither side ever pulled the other again).
    @Test func aNodePullsAPeerItQuarantinedAndRefusesItsAnswer() throws {
        let (store, key, erasure) = try storeWithOneErasure()
        // Compacted with no member trusted: every peer must clear before its data is taken.
        _ = try store.compactForgetRecords(horizon: .max, held: VersionVector([1: erasure.sequence]), trusted: [], scan: 10, limit: 10)
        #expect(try store.erased(among: [key]).isEmpty && store.forgetCompactionState().compactedThrough == erasure.time)
        var settings = compactingSettings()
        settings.pullInterval = 300
        var sent: [(String, PeerMessage)] = []
        let node = try ClusterNode(
            store: store, me: Member(id: 1, name: "n1", address: "n1", role: .core), seeds: [], settings: settings, seed: 1
        ) { sent.append(($0, $1)) }
        let peer = Member(id: 4, name: "n4", address: "n4", role: .edge)
        try node.receive(.membership(MembershipMessage(sender: peer, kind: .join, updates: [peer])), from: 4, address: "n4", now: 0)
        #expect(try !node.takesData(from: 4))
        func pulls(at now: Int64) throws -> [UInt64] {
            sent.removeAll()
            try node.tick(now: now)
            return sent.compactMap { message in
                guard message.0 == "n4", case .pull(_, _, let budget, let request, _) = message.1 else { return nil }
                #expect(budget == 1, "a quarantined peer is asked for as little as it can send")
                return request
            }
        }
        let request = try #require(try pulls(at: 10).first, "a quarantined peer is pulled")
        let delta = try SegmentMessageParser().parse(try JSONParser.parse(Array(#"{"type":"identify","userId":"u-4"}"#.utf8)), receivedAt: 5)
        try node.receive(
            .changes(
                from: 0, through: 1, entries: [ChangeEntry(sequence: 1, origin: 4, originSequence: 1, change: .message(delta))], more: false,
                ahead: [], request: request), from: 4, address: "n4", now: 20)
        #expect(try !store.hasMessage(delta.messageId, subject: delta.subject), "what it answers is refused")
        #expect(try pulls(at: 100).isEmpty, "and pulled again only after the interval")
        #expect(try !pulls(at: 400).isEmpty)
        // Its pull says it cleared through the compaction: it is trusted again.
        try node.receive(
            .pull(cursor: 0, versions: VersionVector(), budget: 1_024, request: 1, cleared: erasure.time), from: 4, address: "n4", now: 450)
        #expect(try node.takesData(from: 4))
    }
}
