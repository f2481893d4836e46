import KithCRDT
import KithStore

/// Whether a replica holds everything a session token covers (docs/consistency.md), pure over
/// the store: the shell serves a read only when nothing is missing, and the simulation checks
/// the same rule.
public enum SessionCoverage {
    /// The origins of `token` whose changes the replica `origin` over `store` does not hold yet.
    /// It holds an origin's changes through n when it has applied that origin's own change n, or
    /// has read that origin's log through position n (a log also numbers the changes its node
    /// relayed, so a token may name a position that is no change of the origin's own). Its own
    /// origin it always holds.
    public static func missing(_ token: VersionVector, in store: any ReplicaStore, origin: UInt64) throws -> [UInt64] {
        let held = try store.versionVector()
        var missing: [UInt64] = []
        for lacking in held.lacking(token) where lacking != origin {
            if try store.cursor(of: lacking) < token[lacking] { missing.append(lacking) }
        }
        return missing
    }
}
