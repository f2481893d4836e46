import KithCRDT
import KithProfile
import KithStore

/// Where a consumer of the change feed stands (docs/feed.md): every change it has been given or
/// passed over, by origin, and where in which node's log it stopped.
///
/// A node's log holds each origin's changes in that origin's order (replication applies an
/// origin's changes only in order, and skips what its version vector covers), so `versions[o]
/// = n` says exactly: every change of origin `o` numbered up to `n` is behind the consumer. That
/// holds on any node, which is why the token resumes on any node and never rewinds there.
public struct FeedToken: Equatable, Sendable {
    /// Per origin, the highest change behind the consumer.
    public var versions: VersionVector
    /// The node whose log the consumer read last, and how far (its local sequence).
    public var node: UInt64
    public var position: UInt64

    public init(versions: VersionVector, node: UInt64, position: UInt64) {
        self.versions = versions
        self.node = node
        self.position = position
    }
}

extension FeedToken: BinaryCodable {
    public func encode(to writer: inout BinaryWriter) {
        writer.write(varint: node)
        writer.write(varint: position)
        versions.encode(to: &writer)
    }

    public init(from reader: inout BinaryReader) throws {
        node = try reader.readVarint()
        position = try reader.readVarint()
        versions = try VersionVector(from: &reader)
    }
}

/// Where a node reads its log for a token, or why it cannot.
public enum FeedStart: Equatable, Sendable {
    /// Read the log after this local sequence, passing over what the token covers.
    case after(UInt64)
    /// The log no longer holds every change the token has not seen: truncation dropped some,
    /// a tree comparison brought some that no entry holds, or this node's log is behind the
    /// token's own position in it (a store restored from an older copy). The consumer resyncs.
    case expired(String)
}

/// Which changes a consumer asked for (`events=`, `traits=`, `kinds=`). Erasures and consent
/// changes always pass: a consumer must learn of them, whatever else it asked to see.
public struct FeedFilter: Equatable, Sendable {
    public var events: Set<String>?
    public var traits: Set<String>?
    public var kinds: Set<IdentifierKind>?

    public init(events: Set<String>? = nil, traits: Set<String>? = nil, kinds: Set<IdentifierKind>? = nil) {
        self.events = events
        self.traits = traits
        self.kinds = kinds
    }

    public func passes(_ change: ChangeEntry.Change) -> Bool {
        switch change {
        case .erasure: return true
        case .setting: return false
        case .unlink(let edge, _): return kinds.map { $0.contains(edge.low.kind) || $0.contains(edge.high.kind) } ?? true
        case .message(let delta):
            if !delta.consent.isEmpty { return true }
            if let kinds, !kinds.contains(delta.subject.kind), !delta.links.contains(where: { kinds.contains($0.kind) }) { return false }
            if let events, !(delta.event.map { events.contains($0.name) } ?? false) { return false }
            if let traits, !delta.traits.members.contains(where: { traits.contains($0.key) }) { return false }
            return true
        }
    }
}

/// The change feed's rules over a node's log, pure: where a token starts, which entries a
/// consumer is given, and the token after them. The API carries them out over the store.
public enum ChangeFeed {
    /// Where `node`'s log is read for `token`. `durable`: the newest entry on disk for good
    /// (nothing after it is ever given out: an operating-system crash could still undo it, and
    /// its sequence would then go to another change).
    public static func start(_ token: FeedToken, node: UInt64, log: LogExtent, durable: UInt64) -> FeedStart {
        if token.node == node {
            if token.position > durable {
                return .expired("this node's log ends before the token's place in it (the node's data was restored from an older copy)")
            }
            if token.position >= log.truncatedThrough { return .after(token.position) }
        }
        if log.rebuilt {
            return .expired("this node's log was rebuilt by a comparison with a peer, so it cannot resume a token from before that elsewhere")
        }
        guard token.versions.covers(log.floor) else {
            return .expired("the log no longer holds every change after this token (truncated through \(log.truncatedThrough))")
        }
        return .after(log.truncatedThrough)
    }

    /// Whether the consumer at `token` has not had `entry` yet.
    public static func isNew(_ entry: ChangeEntry, to token: FeedToken) -> Bool {
        !token.versions.covers(origin: entry.origin, sequence: entry.originSequence)
    }

    /// The token once the consumer has been given `entry` of `node`'s log, or passed over it.
    public static func advance(_ token: inout FeedToken, past entry: ChangeEntry, node: UInt64) {
        token.versions.advance(origin: entry.origin, to: entry.originSequence)
        token.node = node
        token.position = entry.sequence
    }

    /// The token of a consumer that starts now, at `durable`: `versions` is the node's version
    /// vector and `tail` the entries after `durable` (read after it). An origin with a change in
    /// the tail is covered up to just before its first one there: its changes before that all
    /// sit at or before `durable`, since the log holds an origin's changes in order.
    public static func now(node: UInt64, durable: UInt64, versions: VersionVector, tail: [ChangeEntry]) -> FeedToken {
        var behind = versions
        var seen: Set<UInt64> = []
        for entry in tail where entry.sequence > durable && seen.insert(entry.origin).inserted {
            behind[entry.origin] = min(behind[entry.origin], entry.originSequence - 1)
        }
        return FeedToken(versions: behind, node: node, position: durable)
    }

    /// One step of the walk: the entries of `entries` (the log after the token's place, in
    /// order) the consumer is given, at most `limit`, and the token after the last entry looked
    /// at. The walk stops at `durable`. `complete`: `entries` is the whole log after the
    /// token's place, so a walk that gets through it has passed everything through `durable`.
    public static func page(
        _ entries: [ChangeEntry], complete: Bool, from token: FeedToken, node: UInt64, durable: UInt64, filter: FeedFilter, limit: Int
    ) -> FeedPage {
        precondition(limit > 0, "a feed page must be allowed to give at least one change (limit \(limit))")
        var token = token
        var given: [ChangeEntry] = []
        for entry in entries {
            guard entry.sequence <= durable else { return FeedPage(given: given, token: token, atEnd: true) }
            if isNew(entry, to: token) && filter.passes(entry.change) { given.append(entry) }
            advance(&token, past: entry, node: node)
            if given.count == limit { return FeedPage(given: given, token: token, atEnd: token.position >= durable) }
        }
        guard complete else { return FeedPage(given: given, token: token, atEnd: false) }
        // Nothing else up to `durable` is in this log (an erasure may have dropped entries).
        if token.node != node || token.position < durable {
            token.node = node
            token.position = durable
        }
        return FeedPage(given: given, token: token, atEnd: true)
    }
}

extension ChangeFeed {
    /// Entries read from the log at a time.
    public static let chunk = 512

    /// One request's walk of `node`'s log from `token`: where it starts (`start`), then the log
    /// read a chunk at a time through `read(after, limit)` (the store's `changes`), each chunk
    /// through `page`, until `limit` changes are given, the newest durable entry is reached, or
    /// `budget` entries were looked at (a token from another node starts at the oldest entry
    /// held: its consumer comes back for the rest).
    public static func walk(
        from token: FeedToken, node: UInt64, log: LogExtent, durable: UInt64, filter: FeedFilter, limit: Int, budget: Int,
        read: (_ after: UInt64, _ limit: Int) throws -> [ChangeEntry]
    ) throws -> Result<FeedPage, FeedExpired> {
        var after: UInt64
        switch start(token, node: node, log: log, durable: durable) {
        case .after(let position): after = position
        case .expired(let reason): return .failure(FeedExpired(reason: reason))
        }
        var walked = FeedPage(given: [], token: token, atEnd: false)
        var scanned = 0
        while true {
            let entries = try read(after, chunk)
            let step = page(
                entries, complete: entries.count < chunk, from: walked.token, node: node, durable: durable, filter: filter,
                limit: limit - walked.given.count)
            walked = FeedPage(given: walked.given + step.given, token: step.token, atEnd: step.atEnd)
            scanned += entries.count
            guard !step.atEnd, walked.given.count < limit, let last = entries.last, scanned < budget else { return .success(walked) }
            after = last.sequence
        }
    }
}

/// Why a token cannot be resumed on a node (`FeedStart.expired`).
public struct FeedExpired: Error, Equatable, Sendable {
    public var reason: String
}

/// What one step of a feed walk gives (`ChangeFeed.page`).
public struct FeedPage: Equatable, Sendable {
    /// The entries the consumer is given, in log order.
    public var given: [ChangeEntry]
    /// The consumer's token after them (and after the entries passed over).
    public var token: FeedToken
    /// Whether the walk reached the newest durable entry: a long poll with nothing given waits.
    public var atEnd: Bool

    public init(given: [ChangeEntry], token: FeedToken, atEnd: Bool) {
        self.given = given
        self.token = token
        self.atEnd = atEnd
    }
}
