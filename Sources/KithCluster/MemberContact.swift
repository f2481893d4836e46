import KithCRDT

/// What a member last said to this node, as the plans that wait on members read it (log
/// truncation, forget compaction): when it was last heard from and, if it pulled since this
/// node started, its position in this node's log and its version vector; and how recently this
/// node has read the member's own log through.
public struct MemberContact: Sendable, Equatable {
    public var lastHeard: Int64?
    public var readThrough: UInt64?
    public var versions: VersionVector?
    /// This node has read everything the member's log held when this time came: the start of
    /// the newest chain of pulls from it that ended with nothing more to send.
    public var logReadAsOf: Int64?

    public init(lastHeard: Int64?, readThrough: UInt64? = nil, versions: VersionVector? = nil, logReadAsOf: Int64? = nil) {
        self.lastHeard = lastHeard
        self.readThrough = readThrough
        self.versions = versions
        self.logReadAsOf = logReadAsOf
    }

    /// How long the member has been silent at `now`: since it was last heard from, or since
    /// `since` (when this node began counting) if that is later or it has not been heard.
    public func silence(since: Int64, now: Int64) -> Int64 { now - max(lastHeard ?? since, since) }
}
