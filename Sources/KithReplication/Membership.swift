import KithCRDT

/// What a node is for: `core` nodes hold the cluster's data and are expected to be up; `edge`
/// nodes (a store, a kiosk) come and go, and one that is away for days is normal.
public enum MemberRole: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case core = 0, edge = 1
    public var description: String { self == .core ? "core" : "edge" }
    public init?(name: String) {
        guard let role = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = role
    }
}

/// A member's state as SWIM knows it. For an edge member, `dead` reads as "away": it is kept, not
/// reaped, and raises no alarm.
public enum MemberStatus: UInt8, Sendable, Comparable, CustomStringConvertible {
    case alive = 0, suspect = 1, dead = 2, left = 3
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { ["alive", "suspect", "dead", "left"][Int(rawValue)] }
}

/// One member as gossiped: who, where, what role, and its state at an incarnation.
public struct Member: Equatable, Sendable {
    public var id: UInt64
    public var name: String
    public var address: String
    /// Where the member's HTTP API answers (for operator tools that ask every node, such as
    /// the cluster-wide read audit); empty if not advertised.
    public var api: String = ""
    public var role: MemberRole
    /// A scoped site (docs/replication.md, "Scope"): it holds only the customers of its scope,
    /// projected for its purposes, so it never takes a peer's raw log (no pushes to it, no pulls
    /// by it, no tree comparisons with it) and is brought its customers by site syncs instead.
    public var scoped: Bool
    public var incarnation: UInt64
    public var status: MemberStatus

    public init(
        id: UInt64, name: String, address: String, role: MemberRole, scoped: Bool = false, incarnation: UInt64 = 0, status: MemberStatus = .alive
    ) {
        precondition(!scoped || role == .edge, "only an edge member may be scoped (member \(name), role \(role))")
        self.id = id
        self.name = name
        self.address = address
        self.role = role
        self.scoped = scoped
        self.incarnation = incarnation
        self.status = status
    }

    /// Whether this member takes whole logs and document states: every member but a scoped site.
    public var holdsEverything: Bool { !scoped }

    /// Whether this record overrides `other` for the same member (SWIM's precedence: a higher
    /// incarnation wins; at equal incarnation the worse state wins, so a suspicion sticks until
    /// the member refutes it with a new incarnation). A member that left comes back only by
    /// rejoining, alive at a higher incarnation.
    func overrides(_ other: Member) -> Bool {
        if other.status == .left { return status == .alive && incarnation > other.incarnation }
        if status == .left { return true }
        if incarnation != other.incarnation { return incarnation > other.incarnation }
        return status > other.status
    }
}

/// Timing of the failure detector, in milliseconds.
public struct MembershipSettings: Sendable {
    public var probeInterval: Int64 = 1_000
    public var probeTimeout: Int64 = 300
    /// Members asked to probe a target that did not answer directly.
    public var indirectProbes = 3
    /// Suspicion lasts between `minimum` and `maximum` probe intervals times ⌈log10(members)⌉
    /// (1 up to ten members), shorter as more members independently confirm it (Lifeguard §4.2).
    /// At the defaults a stopped member of a small cluster is declared dead about 5 s after it
    /// stopped (suspected within a probe round or two, confirmed by another member, then 2.5 s),
    /// and a member paused for up to 3 s (a stalled VM, a long GC) refutes in time: suspicion
    /// starts a probe round into the pause and lasts 2.5 s more (docs/replication.md, "Membership").
    public var suspicionMinimumIntervals = 2.5
    public var suspicionMaximumIntervals = 6.0
    /// Confirmations that shorten suspicion to its minimum; fewer when fewer members can give
    /// them (Lifeguard's k = min(K, n − 2)).
    public var expectedConfirmations = 3
    /// A dead or departed core member is forgotten after this long.
    public var reapAfter: Int64 = 24 * 3_600_000
    /// How often members believed dead (or away) are asked to rejoin, up to
    /// `reconnectsPerInterval` of them each time: both sides of a healed partition each believe
    /// the other dead, and without this would never speak again. A question is one small
    /// message, so asking every second costs little and brings a healed partition back within
    /// a second or two.
    public var reconnectInterval: Int64 = 1_000
    public var reconnectsPerInterval = 3
    /// Most updates piggybacked on one message.
    public var updatesPerMessage = 8
    /// While updates wait to be spread, every `gossipInterval` they go to up to `gossipFanout`
    /// live members in a ping of their own (memberlist's gossip: 200 ms, 3), rather than only on
    /// the next probe: a suspicion reaches the others, and their confirmations come back, within
    /// a fraction of a second instead of a probe round or two.
    public var gossipInterval: Int64 = 200
    public var gossipFanout = 3
    /// Local health (Lifeguard §4.1): probe timeouts stretch by up to this factor while this node
    /// itself seems slow (missed acks, refuted suspicions).
    public var maximumHealthPenalty = 8

    public init() {}
}

/// SWIM membership (Das et al., 2002) with Lifeguard's suspicion and local health (Dadgar et
/// al., 2018), as a pure instance: it never reads a clock or a socket. The shell feeds it time,
/// randomness and messages, and carries out the directives it returns.
public struct Membership: Sendable {
    public enum Directive: Equatable, Sendable {
        case send(to: String, MembershipMessage)
        /// A member became reachable (a new member, or one back from suspicion, death or away).
        case memberUp(Member)
        /// A member became unreachable (dead, away, or left).
        case memberDown(Member)
        /// A round trip to a member, for measuring its clock (`ClockOffsets`).
        case clockSample(ClockSample)
    }

    public let settings: MembershipSettings
    public private(set) var me: Member
    /// Every other member known, by id.
    public private(set) var members: [UInt64: Member] = [:]
    /// The configured addresses this node joins through (its own left out).
    public private(set) var seeds: [String]
    private var random: SplitMix64
    private var probeOrder: [UInt64] = []
    private var nextProbeAt: Int64 = 0
    private var nextReconnectAt: Int64 = 0
    private var nextGossipAt: Int64 = 0
    private var nextProbeSequence: UInt64 = 0
    private var probe: Probe?
    /// Probes this node runs for others (ping-req): our probe sequence → who asked, their sequence.
    private var relayed: [UInt64: (requester: String, sequence: UInt64, expires: Int64)] = [:]
    private var suspicions: [UInt64: Suspicion] = [:]
    private var downSince: [UInt64: Int64] = [:]
    private var broadcasts: [Broadcast] = []
    private var healthPenalty = 0
    /// When this node last received any membership message: a probe that fails while others
    /// are heard from says the target is down, not that this node is slow.
    private var lastReceivedAt: Int64 = .min
    /// The time of the latest input: messages are stamped with it, so that peers can measure
    /// this node's clock from their round trips.
    private var clock: Int64 = 0

    private struct Probe {
        var startedAt: Int64
        var target: UInt64
        var sequence: UInt64
        var deadline: Int64
        var indirectSent = false
        var endsAt: Int64
    }

    private struct Suspicion {
        var started: Int64
        var confirmations: Set<UInt64>
    }

    private struct Broadcast {
        var member: Member
        var remaining: Int
    }

    /// `me.incarnation` should grow across restarts (the shell passes its clock in milliseconds):
    /// a restarted member that came back at a lower incarnation than the cluster last saw would
    /// be ignored as stale until someone told it it was dead.
    public init(me: Member, seeds: [String], settings: MembershipSettings = MembershipSettings(), seed: UInt64) {
        self.me = me
        self.seeds = seeds.filter { $0 != me.address }
        self.settings = settings
        random = SplitMix64(seed: seed)
        enqueue(me)
    }

    /// Sets the address of this node's HTTP API, gossiped with its record. Called once, before
    /// the node starts (the API's port may be known only once it listens).
    public mutating func advertise(api: String) {
        me.api = api
        enqueue(me)
    }

    /// Members that are up (alive or suspect), not this node.
    public var reachable: [Member] {
        members.values.filter { $0.status <= .suspect }.sorted { $0.id < $1.id }
    }

    /// Every member, this node included, by name.
    public var all: [Member] { ([me] + members.values).sorted { $0.name < $1.name } }

    // MARK: Inputs

    /// Advances time: starts probes, escalates unanswered ones, expires suspicions, reaps.
    /// `wall`: the wall clock, which stamps messages, when `now` (the timers' clock) is another.
    public mutating func tick(now: Int64, wall: Int64? = nil) -> [Directive] {
        clock = wall ?? now
        var directives: [Directive] = []
        if members.values.allSatisfy({ $0.status >= .dead }), !seeds.isEmpty, now >= nextProbeAt, me.status != .left {
            // Alone: (re)join through the seeds.
            for seed in seeds { directives.append(.send(to: seed, message(.join))) }
        }
        if now >= nextReconnectAt && me.status != .left {
            nextReconnectAt = now + settings.reconnectInterval
            let down = members.values.filter { $0.status == .dead }.sorted { $0.id < $1.id }
            // Tell each how we see it, so that it can refute with a higher incarnation.
            for target in pick(settings.reconnectsPerInterval, from: down) {
                directives.append(.send(to: target.address, message(.join, updates: [target])))
            }
            // Seeds this node knows nothing of: a node that starts while the cluster is
            // partitioned learns only its own side, and when every node of both sides has
            // restarted that way neither knows the other is there to ask. Asking the seeds
            // brings the halves together once the partition heals.
            let known = Set(members.values.map(\.address))
            for seed in seeds where !known.contains(seed) && !members.values.allSatisfy({ $0.status >= .dead }) {
                directives.append(.send(to: seed, message(.join)))
            }
        }
        directives += checkProbe(now: now)
        if now >= nextProbeAt && probe == nil { directives += startProbe(now: now) }
        if now >= nextGossipAt && me.status != .left {
            nextGossipAt = now + settings.gossipInterval
            directives += gossip()
        }
        directives += expireSuspicions(now: now)
        reap(now: now)
        relayed = relayed.filter { $0.value.expires > now }
        return directives
    }

    /// Handles one message from the node at `address`; `now` and `wall` as for `tick`.
    public mutating func receive(_ message: MembershipMessage, from address: String, now: Int64, wall: Int64? = nil) -> [Directive] {
        clock = wall ?? now
        lastReceivedAt = now
        var directives: [Directive] = []
        for update in message.updates { directives += apply(update, from: message.sender.id, now: now) }
        directives += apply(message.sender, from: message.sender.id, now: now, direct: true)
        switch message.kind {
        case .join:
            directives.append(
                .send(to: address, self.message(.welcome(echo: message.sentAt), updates: [me] + Array(members.values).sorted { $0.id < $1.id })))
            // A ping outside the probe round, so that this node measures the newcomer's clock now
            // rather than when the round reaches it.
            directives.append(.send(to: address, self.message(.ping(nextSequence()))))
        case .welcome(let echo):
            directives += clockSample(message, echo: echo)
        case .ping(let sequence):
            directives.append(.send(to: address, self.message(.ack(sequence, echo: message.sentAt))))
        case .pingRequest(let sequence, let target):
            guard let member = members[target] else { break }
            let ours = nextSequence()
            relayed[ours] = (address, sequence, now + settings.probeInterval)
            directives.append(.send(to: member.address, self.message(.ping(ours))))
        case .ack(let sequence, let echo):
            directives += clockSample(message, echo: echo)
            if let relay = relayed.removeValue(forKey: sequence) {
                // The requester did not send the ping this answers: no time to echo.
                directives.append(.send(to: relay.requester, self.message(.ack(relay.sequence, echo: nil))))
            } else if let probe, probe.sequence == sequence {
                if !probe.indirectSent { healthPenalty = max(0, healthPenalty - 1) }
                self.probe = nil
            }
        case .leave: break
        }
        return directives
    }

    /// A round trip completed by `message`, which echoes this node's wall time `echo`; it came
    /// back at `clock`, the wall time of this input.
    private func clockSample(_ message: MembershipMessage, echo: Int64?) -> [Directive] {
        guard let echo, message.sender.id != me.id else { return [] }
        return [.clockSample(ClockSample(peer: message.sender.id, sentAt: echo, peerTime: message.sentAt, receivedAt: clock))]
    }

    /// Leaves the cluster gracefully: tells everyone, then stops probing.
    public mutating func leave() -> [Directive] {
        me.incarnation += 1
        me.status = .left
        let note = message(.leave, updates: [me])
        return members.values.filter { $0.status <= .suspect }.map { .send(to: $0.address, note) }
    }

    /// Asks to join through `address` now (the `kith join` command).
    public mutating func join(_ address: String) -> [Directive] {
        if !seeds.contains(address) && address != me.address { seeds.append(address) }
        return [.send(to: address, message(.join))]
    }

    /// A message to send with gossip piggybacked (up to the configured number of updates).
    public mutating func message(_ kind: MembershipMessage.Kind, updates explicit: [Member] = []) -> MembershipMessage {
        var updates = explicit
        var index = 0
        while updates.count < settings.updatesPerMessage && index < broadcasts.count {
            if !updates.contains(where: { $0.id == broadcasts[index].member.id }) { updates.append(broadcasts[index].member) }
            broadcasts[index].remaining -= 1
            index += 1
        }
        broadcasts.removeAll { $0.remaining <= 0 }
        return MembershipMessage(sender: me, kind: kind, updates: updates, sentAt: clock)
    }

    /// Pending updates to a few live members, in pings outside the probe round (their acks
    /// only measure clocks).
    private mutating func gossip() -> [Directive] {
        guard !broadcasts.isEmpty else { return [] }
        let live = members.values.filter { $0.status == .alive }.sorted { $0.id < $1.id }
        return pick(settings.gossipFanout, from: live).map { .send(to: $0.address, message(.ping(nextSequence()))) }
    }

    // MARK: Probing

    private mutating func startProbe(now: Int64) -> [Directive] {
        nextProbeAt = now + settings.probeInterval * Int64(healthPenalty + 1)
        guard let target = nextTarget() else { return [] }
        let sequence = nextSequence()
        probe = Probe(
            startedAt: now, target: target, sequence: sequence, deadline: now + settings.probeTimeout * Int64(healthPenalty + 1),
            endsAt: now + settings.probeInterval * Int64(healthPenalty + 1))
        return [.send(to: members[target]!.address, message(.ping(sequence)))]
    }

    private mutating func checkProbe(now: Int64) -> [Directive] {
        guard var probe else { return [] }
        guard let target = members[probe.target], target.status <= .suspect else {
            self.probe = nil
            return []
        }
        if !probe.indirectSent && now >= probe.deadline {
            probe.indirectSent = true
            self.probe = probe
            // Lifeguard raises local health when the helpers do not answer (no nacks): the fault
            // may be here. Kith has no nacks; it takes silence from every member since the probe
            // began as that sign. A target that is simply down must not slow this node's probing,
            // or every failure would be detected later than the last.
            if lastReceivedAt < probe.startedAt { healthPenalty = min(settings.maximumHealthPenalty, healthPenalty + 1) }
            let helpers = members.values.filter { $0.id != target.id && $0.status == .alive && $0.role == .core }
                .sorted { $0.id < $1.id }
            return pick(settings.indirectProbes, from: helpers).map {
                .send(to: $0.address, message(.pingRequest(probe.sequence, target: target.id)))
            }
        }
        if now >= probe.endsAt {
            self.probe = nil
            return suspect(target, by: me.id, now: now)
        }
        return []
    }

    /// Round-robin over a shuffled list of members that can answer (SWIM §4.3).
    private mutating func nextTarget() -> UInt64? {
        while let candidate = probeOrder.popLast() {
            if let member = members[candidate], member.status <= .suspect { return candidate }
        }
        let candidates = members.values.filter { $0.status <= .suspect }.map(\.id).sorted()
        guard !candidates.isEmpty else { return nil }
        probeOrder = shuffled(candidates)
        return probeOrder.popLast()
    }

    // MARK: Suspicion

    private mutating func suspect(_ member: Member, by accuser: UInt64, now: Int64) -> [Directive] {
        guard member.status <= .suspect else { return [] }
        var suspected = member
        suspected.status = .suspect
        members[member.id] = suspected
        if var suspicion = suspicions[member.id] {
            suspicion.confirmations.insert(accuser)
            suspicions[member.id] = suspicion
        } else {
            suspicions[member.id] = Suspicion(started: now, confirmations: [accuser])
            enqueue(suspected)
        }
        return []
    }

    private mutating func expireSuspicions(now: Int64) -> [Directive] {
        var directives: [Directive] = []
        for (id, suspicion) in suspicions.sorted(by: { $0.key < $1.key }) where now - suspicion.started >= suspicionTimeout(suspicion) {
            suspicions[id] = nil
            guard var member = members[id], member.status == .suspect else { continue }
            member.status = .dead
            members[id] = member
            downSince[id] = now
            enqueue(member)
            directives.append(.memberDown(member))
        }
        return directives
    }

    /// Lifeguard's dynamic suspicion timeout: from the maximum down to the minimum as independent
    /// confirmations arrive, both scaled by log2 of the cluster size (linear in the confirmations
    /// where Lifeguard is logarithmic: with the expected three confirmations the two agree at the ends).
    private func suspicionTimeout(_ suspicion: Suspicion) -> Int64 {
        let scale = Double(ceilingLog10(members.count + 1))
        let minimum = Int64(settings.suspicionMinimumIntervals * Double(settings.probeInterval) * scale)
        let maximum = Int64(settings.suspicionMaximumIntervals * Double(settings.probeInterval) * scale)
        // Members that could confirm: all but this node and the suspect.
        let expected = Int64(max(1, min(settings.expectedConfirmations, members.count - 1)))
        let confirmations = min(expected, Int64(max(0, suspicion.confirmations.count - 1)))
        return maximum - (maximum - minimum) * confirmations / expected
    }

    // MARK: Gossip

    /// Applies what another member says about `update`'s subject.
    private mutating func apply(_ update: Member, from sender: UInt64, now: Int64, direct: Bool = false) -> [Directive] {
        if update.id == me.id { return refute(update) }
        guard let known = members[update.id] else {
            guard update.status <= .suspect || update.role == .edge else { return [] }
            members[update.id] = update
            enqueue(update)
            if update.status == .suspect { suspicions[update.id] = Suspicion(started: now, confirmations: [sender]) }
            return update.status <= .suspect ? [.memberUp(update)] : []
        }
        // A message straight from a member proves it is alive at the incarnation it states.
        if direct && update.status == .alive
            && (update.incarnation > known.incarnation || (update.incarnation == known.incarnation && known.status != .left))
        {
            return markAlive(update, was: known)
        }
        guard update.overrides(known) else {
            if update.status == .suspect && known.status == .suspect && update.incarnation == known.incarnation {
                suspicions[update.id]?.confirmations.insert(sender)
            }
            return []
        }
        switch update.status {
        case .alive: return markAlive(update, was: known)
        case .suspect:
            members[update.id] = update
            enqueue(update)
            suspicions[update.id] = Suspicion(started: now, confirmations: [sender])
            return []
        case .dead, .left:
            members[update.id] = update
            suspicions[update.id] = nil
            downSince[update.id] = now
            enqueue(update)
            return known.status <= .suspect ? [.memberDown(update)] : []
        }
    }

    private mutating func markAlive(_ update: Member, was known: Member) -> [Directive] {
        var alive = update
        alive.status = .alive
        guard alive != known else { return [] }
        members[update.id] = alive
        suspicions[update.id] = nil
        downSince[update.id] = nil
        enqueue(alive)
        return known.status >= .dead ? [.memberUp(alive)] : []
    }

    /// Someone says this node is suspect or dead: refute with a higher incarnation.
    private mutating func refute(_ update: Member) -> [Directive] {
        guard me.status != .left, update.status != .alive, update.incarnation >= me.incarnation else { return [] }
        me.incarnation = update.incarnation + 1
        healthPenalty = min(settings.maximumHealthPenalty, healthPenalty + 1)
        enqueue(me)
        return []
    }

    private mutating func enqueue(_ member: Member) {
        broadcasts.removeAll { $0.member.id == member.id }
        // SWIM's λ·log(n) retransmissions, λ = 3.
        broadcasts.insert(Broadcast(member: member, remaining: 3 * max(1, ceilingLog2(members.count + 2))), at: 0)
    }

    /// Forgets core members dead or gone for longer than `reapAfter`. Edge members are kept:
    /// an edge site away for days is expected back.
    private mutating func reap(now: Int64) {
        for (id, since) in downSince where now - since >= settings.reapAfter {
            guard let member = members[id], member.role == .core || member.status == .left else { continue }
            members[id] = nil
            downSince[id] = nil
        }
    }

    // MARK: Helpers

    private mutating func nextSequence() -> UInt64 {
        nextProbeSequence += 1
        return nextProbeSequence
    }

    private mutating func shuffled(_ items: [UInt64]) -> [UInt64] {
        var items = items
        for index in stride(from: items.count - 1, to: 0, by: -1) {
            items.swapAt(index, Int(random.next() % UInt64(index + 1)))
        }
        return items
    }

    private mutating func pick(_ count: Int, from members: [Member]) -> [Member] {
        Array(shuffled(members.map(\.id)).prefix(count)).compactMap { id in members.first { $0.id == id } }
    }
}

/// A membership message: who sends it, what it asks, and piggybacked updates.
public struct MembershipMessage: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case ping(UInt64)
        /// `echo`: the `sentAt` of the ping answered, when this node received that ping itself.
        case ack(UInt64, echo: Int64?)
        case pingRequest(UInt64, target: UInt64)
        case join
        /// `echo`: the join's `sentAt`.
        case welcome(echo: Int64?)
        case leave
    }

    public var sender: Member
    public var kind: Kind
    public var updates: [Member]
    /// The sender's clock when it made the message (Unix ms).
    public var sentAt: Int64

    public init(sender: Member, kind: Kind, updates: [Member], sentAt: Int64 = 0) {
        self.sender = sender
        self.kind = kind
        self.updates = updates
        self.sentAt = sentAt
    }
}

/// ⌈log2(n)⌉ for n ≥ 1.
func ceilingLog2(_ n: Int) -> Int { n <= 1 ? 0 : Int.bitWidth - (n - 1).leadingZeroBitCount }

/// ⌈log10(n)⌉, at least 1: the suspicion scale (memberlist's), 1 for up to ten members.
func ceilingLog10(_ n: Int) -> Int {
    var scale = 1, reach = 10
    while reach < n {
        scale += 1
        reach = reach > Int.max / 10 ? Int.max : reach * 10
    }
    return scale
}
