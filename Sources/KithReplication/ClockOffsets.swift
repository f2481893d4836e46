/// Bounds on how far this node's clock may be from the cluster's, in milliseconds.
public struct ClockSettings: Sendable, Equatable {
    /// A node whose clock is further than this from a majority of the core members it reaches
    /// refuses writes and erasures (CockroachDB's `--max-offset`, for the same reason: erasure
    /// boundaries and event times are only as right as the clocks that made them).
    public var maximumOffset: Int64 = 500
    /// A change of the wall clock against the monotonic clock larger than this (half the bound) is
    /// a jump: every measurement is dropped and the clock is measured afresh before it is trusted again.
    public var jumpThreshold: Int64 { max(1, maximumOffset / 2) }
    /// Round trips kept per peer; the one with the shortest round trip is the estimate (NTP's
    /// clock filter: the shortest trip has the least room for asymmetric delay).
    public var samplesPerPeer = 4
    /// A core node that has seeds but has not yet measured any peer refuses writes for at most
    /// this long after it starts (it has not yet seen the cluster's time); after that, alone,
    /// it serves on its own clock.
    public var unmeasuredGrace: Int64 = 10_000

    public init() {}
}

/// One round trip to a peer: this node's clock when the question left and when the answer came
/// back, and the peer's clock when it answered.
public struct ClockSample: Equatable, Sendable {
    public var peer: UInt64
    public var sentAt: Int64
    public var peerTime: Int64
    public var receivedAt: Int64

    public init(peer: UInt64, sentAt: Int64, peerTime: Int64, receivedAt: Int64) {
        self.peer = peer
        self.sentAt = sentAt
        self.peerTime = peerTime
        self.receivedAt = receivedAt
    }

    public var roundTrip: Int64 { receivedAt - sentAt }
    /// The peer's clock minus this node's, assuming the two legs took equally long; the truth is
    /// within `roundTrip / 2` of it either way.
    public var offset: Int64 { peerTime - (sentAt + roundTrip / 2) }
}

/// What this node knows of one peer's clock.
public struct PeerClock: Equatable, Sendable {
    public var peer: UInt64
    /// Peer minus this node, in milliseconds, and the uncertainty of that figure (half the round trip).
    public var offset: Int64
    public var uncertainty: Int64

    public init(peer: UInt64, offset: Int64, uncertainty: Int64) {
        self.peer = peer
        self.offset = offset
        self.uncertainty = uncertainty
    }
}

/// Whether this node's clock may be trusted with writes, and why.
public struct ClockCheck: Equatable, Sendable {
    public enum Verdict: String, Sendable {
        /// Within `maximumOffset` of a majority of the core members (or alone).
        case withinBound = "within_bound"
        /// A majority of the core members are not surely within the bound.
        case offsetTooLarge = "offset_too_large"
        /// Started with seeds and not yet measured against any peer (or the clock jumped).
        case unmeasured
    }

    public var verdict: Verdict
    /// This node's clock minus the cluster's (the median of the measured core members' clocks
    /// and its own), when any peer has been measured.
    public var offset: Int64?
    public var maximumOffset: Int64
    /// Core members known (this node aside), those measured, and those surely within the bound.
    public var members: Int
    public var measured: Int
    public var agreeing: Int

    public init(verdict: Verdict, offset: Int64?, maximumOffset: Int64, members: Int, measured: Int, agreeing: Int) {
        self.verdict = verdict
        self.offset = offset
        self.maximumOffset = maximumOffset
        self.members = members
        self.measured = measured
        self.agreeing = agreeing
    }

    public var allowsWrites: Bool { verdict == .withinBound }

    /// A sentence for the log and for a refused request's JSON error.
    public var explanation: String {
        switch verdict {
        case .withinBound: return "this node's clock is within \(maximumOffset) ms of the cluster's"
        case .offsetTooLarge:
            let figure = offset.map { "\($0) ms" } ?? "an unknown amount"
            return
                "this node's clock is \(figure) from the cluster's (at most \(maximumOffset) ms allowed; \(agreeing) of the \(members) other core members agree with it): writes and erasures are refused until it is set right"
        case .unmeasured:
            return "this node has not yet measured its clock against the cluster's: writes and erasures wait until it has"
        }
    }

    /// An erasure accepted at `acceptedAt` is answered once this node's clock reads this: by
    /// then every node whose clock is within the bound reads later than `boundary`, so a message
    /// any of them accepts after the answer is dated after the erasure (docs/replication.md,
    /// "Erasures and clocks"). Two nodes within the bound of a common majority member differ by
    /// at most twice the bound, and data held was dated no later than its receipt, so the
    /// boundary is at most `acceptedAt` + twice the bound and the wait at most four times it.
    /// A boundary further ahead was set by a clock out of bound (an edge that was offline with a
    /// fast clock): the answer does not wait for it (`isBoundaryAhead` says so, for the log).
    public func erasureAcknowledgement(boundary: Int64, acceptedAt: Int64) -> Int64 {
        min(boundary, acceptedAt + 2 * maximumOffset) + 2 * maximumOffset + 1
    }

    /// Whether an erasure's boundary is further ahead of its acceptance than clocks within the
    /// bound can make it: writes dated before the boundary are dropped until then.
    public func isBoundaryAhead(_ boundary: Int64, acceptedAt: Int64) -> Bool {
        boundary > acceptedAt + 2 * maximumOffset
    }
}

/// Clock offsets to peers, measured from membership round trips, and the rule that decides
/// whether this node's clock may date writes. A pure value: the shell feeds it samples and both
/// of its clocks, and asks it for a `ClockCheck`.
public struct ClockOffsets: Sendable {
    public let settings: ClockSettings
    private var samples: [UInt64: [ClockSample]] = [:]
    /// Wall minus monotonic time when last seen, to notice the wall clock jumping.
    private var wallAhead: Int64?
    private var everMeasured = false
    public private(set) var jumps = 0

    public init(settings: ClockSettings = ClockSettings()) {
        self.settings = settings
    }

    /// Records a round trip. Samples that cannot be right (negative or absurd round trips) are dropped.
    public mutating func record(_ sample: ClockSample) {
        guard sample.roundTrip >= 0, sample.roundTrip <= 60_000 else { return }
        var kept = samples[sample.peer] ?? []
        kept.append(sample)
        if kept.count > settings.samplesPerPeer { kept.removeFirst(kept.count - settings.samplesPerPeer) }
        samples[sample.peer] = kept
        everMeasured = true
    }

    /// Compares the wall clock with the monotonic one; a jump drops every measurement.
    public mutating func observe(wall: Int64, monotonic: Int64) {
        let ahead = wall - monotonic
        defer { wallAhead = ahead }
        guard let previous = wallAhead, abs(ahead - previous) > settings.jumpThreshold else { return }
        samples = [:]
        everMeasured = false
        jumps += 1
    }

    /// The estimate for `peer`: its sample with the shortest round trip.
    public func clock(of peer: UInt64) -> PeerClock? {
        guard let best = samples[peer]?.min(by: { $0.roundTrip < $1.roundTrip }) else { return nil }
        return PeerClock(peer: peer, offset: best.offset, uncertainty: (best.roundTrip + 1) / 2)
    }

    /// The verdict over the core members this node knows (reachable or not: a measurement stays
    /// good until this node's clock jumps, and counting members out of reach keeps the two sides
    /// of a partition from each finding a "majority" of their own). Writes are allowed when this
    /// node and the members surely within the bound of it are a strict majority: then any two
    /// nodes allowed writes share a member within the bound of both, so their clocks differ by at
    /// most twice the bound. `hasSeeds`: this node was told whom to join (a lone node has nobody
    /// to compare with). `isEdge`: an edge site keeps working alone, so it is never held back for
    /// want of a first measurement.
    public func check(coreMembers: [UInt64], hasSeeds: Bool, isEdge: Bool, startedAt: Int64, now: Int64) -> ClockCheck {
        let clocks = coreMembers.compactMap { clock(of: $0) }
        let agreeing = clocks.filter { abs($0.offset) + $0.uncertainty <= settings.maximumOffset }.count
        var offset: Int64?
        if !clocks.isEmpty {
            let others = (clocks.map { -$0.offset } + [0]).sorted()
            offset = others[others.count / 2]
        }
        var check = ClockCheck(
            verdict: .withinBound, offset: offset, maximumOffset: settings.maximumOffset, members: coreMembers.count, measured: clocks.count,
            agreeing: agreeing)
        if !isEdge && hasSeeds && !everMeasured && now - startedAt < settings.unmeasuredGrace {
            check.verdict = .unmeasured
        } else if 2 * (agreeing + 1) <= coreMembers.count + 1 {
            check.verdict = clocks.isEmpty ? .unmeasured : .offsetTooLarge
        }
        return check
    }
}
