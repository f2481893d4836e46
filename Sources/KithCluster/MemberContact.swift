import KithCRDT

/// What a member last said to this node, as the plans that wait on members read it (log
/// truncation, forget compaction): when it was last heard from and, if it pulled since this
/// node started, its position in this node's log and its version vector.
public struct MemberContact: Sendable, Equatable {
    public var lastHeard: Int64?
    public var readThrough: UInt64?
    public var versions: VersionVector?

    public init(lastHeard: Int64?, readThrough: UInt64? = nil, versions: VersionVector? = nil) {
        self.lastHeard = lastHeard
        self.readThrough = readThrough
        self.versions = versions
    }

    /// How long the member has been silent at `now`: since it was last heard from, or since
    /// `since` (when this node began counting) if that is later or it has not been heard.
    public func silence(since: Int64, now: Int64) -> Int64 { now - max(lastHeard ?? since, since) }
}
