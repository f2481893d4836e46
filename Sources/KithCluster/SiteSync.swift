import KithCRDT
import KithProfile

/// What a core answers a scoped site's sync (docs/replication.md, "Scope"). Pure, like
/// `SiteHoldings`, which decides which components the site holds: this compares what the site
/// says it holds with what the core would send it.
///
/// The site reports every document it holds with the digest of its state; the core works out
/// the components the site holds among those it looked at (everything the site reported, and
/// what changed or was swept since), and the digest of each member's projected state. A
/// component goes whole when any member the site may hold differs from what it reported (or is
/// missing there): its documents' links and the consent that decides its projection are spread
/// over its members, so the site joins them together (and, when a join cannot take a field
/// back, replaces them together: `StoreEngine.applySiteUpdate`). A document the site reported
/// that no held component has is purged.
public enum SiteSync {
    /// A component the site holds, as the core would send it: each member the site may hold,
    /// with the digest of its projected state.
    public struct HeldComponent: Equatable, Sendable {
        public var members: [Identifier: Digest128]

        public init(members: [Identifier: Digest128]) {
            self.members = members
        }
    }

    /// The core's decisions for one sync.
    public struct Answer: Equatable, Sendable {
        /// Components to send, each as the members that go, sorted.
        public var send: [[Identifier]]
        /// Reported documents of no held component, sorted.
        public var purge: [Identifier]
    }

    public static func answer(reported: [HeldDocument], held: [HeldComponent]) -> Answer {
        var site: [Identifier: Digest128] = [:]
        for document in reported { site[document.identifier] = document.digest }
        var send: [[Identifier]] = []
        var heldMembers: Set<Identifier> = []
        for component in held {
            heldMembers.formUnion(component.members.keys)
            if component.members.contains(where: { site[$0.key] != $0.value }) { send.append(component.members.keys.sorted()) }
        }
        let purge = site.keys.filter { !heldMembers.contains($0) }.sorted()
        return Answer(send: send.sorted { $0.lexicographicallyPrecedes($1) }, purge: purge)
    }
}
