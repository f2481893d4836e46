import KithCRDT

/// What a node does when a scoped site's log was truncated past what the node had read from it.
/// No tree comparison with a site can bring the rest (a site holds only its own customers), so
/// the node compares trees with a core that held the site's changes through that point, and
/// after such a comparison reads the site's log on from where it was truncated. Pure: the node
/// (`fellBehindSiteLog`, `compareTrees`) carries the answers out.
public enum SiteLogRecovery {
    /// The core to compare trees with: of `cores` (the data peers, each with the version vector
    /// it last sent, if any), the lowest-numbered one whose vector covers `site`'s changes
    /// through `through`. Nil when none does yet: the site's next answer from behind its
    /// truncated log asks again.
    public static func coreToCompare(site: UInt64, through: UInt64, cores: [(id: UInt64, versions: VersionVector?)]) -> UInt64? {
        cores.filter { $0.versions?.covers(origin: site, sequence: through) ?? false }.map(\.id).min()
    }

    /// The sites whose logs a comparison with a peer that held `held` lets this node read on, and
    /// from where: each site this node is behind (`behind`: site → where its log was truncated)
    /// whose changes `held` covers that far (a site's log holds only its own changes, numbered
    /// as its origin's sequences).
    public static func logsToResume(held: VersionVector, behind: [UInt64: UInt64]) -> [UInt64: UInt64] {
        behind.filter { site, past in held.covers(origin: site, sequence: past) }
    }
}
