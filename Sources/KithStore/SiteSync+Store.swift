import KithCRDT
import KithProfile

/// What a scoped site did with a core's update (`ProfileStore.applySiteUpdate`).
public struct SiteUpdateOutcome: Equatable, Sendable {
    /// Documents joined that changed anything here.
    public var joined = 0
    /// Identifiers purged as told, and identifiers of components replaced.
    public var purged = 0
    public var replaced = 0
    /// Identifiers the update asked to purge or replace that this site kept, because it accepted
    /// changes about them that the core did not hold yet: they go at a later sync.
    public var kept = 0

    public init(joined: Int = 0, purged: Int = 0, replaced: Int = 0, kept: Int = 0) {
        self.joined = joined
        self.purged = purged
        self.replaced = replaced
        self.kept = kept
    }
}

/// The store's side of site syncs (docs/replication.md, "Scope"): on the core, components as a
/// scope decides on them and document states by identifier; on the site, what it holds and the
/// update it is sent.
extension StoreEngine {
    /// The component of `identifier` as a scope decides on it; nil if the identifier is unknown.
    /// `seenBy` is read from the ledger only when asked (it is linear in the profile's history).
    package func scopeComponent(of identifier: Identifier, withSeenBy: Bool, in reader: some StoreReading) throws -> Scope.Component? {
        guard let view = try view(of: identifier, in: reader) else { return nil }
        return Scope.Component(view: view, seenBy: withSeenBy ? try seenBy(identifier, in: reader) : SeenBy())
    }

    /// The states of the documents of `identifiers`, forget records included (none for an
    /// identifier of which nothing is held).
    package func documentStates(of identifiers: [Identifier], in reader: some StoreReading) throws -> [DocumentState] {
        // One HMAC an identifier: the forget keys in order, and the identifier of each.
        let keys = identifiers.map { hasher.forgetKeyBytes(for: $0) }
        return try documentStates(for: keys, of: Dictionary(zip(keys, identifiers), uniquingKeysWith: { first, _ in first }), in: reader)
    }

    /// Every document held here, with the digest of its state: what a scoped site reports.
    package func heldDocuments(in reader: some StoreReading) throws -> [HeldDocument] {
        let identifiers = try reader.identifiers(inBuckets: 0..<DigestTreeShape.bucketCount, hasher: hasher).sorted()
        return try documentStates(of: identifiers, in: reader).compactMap { state in
            state.identifier.map { HeldDocument(identifier: $0, digest: state.contentDigest) }
        }
    }

    /// A site applies a core's update: the documents to purge go, then each component's states
    /// are joined, then (`replaceDiffering`) a component whose documents the join left
    /// different from what was sent is replaced: a consent change masked a field, or the site
    /// took a field its purposes may not see, and a join cannot take it back. Never what this
    /// site accepted and some member may still lack: an identifier that a change still in this
    /// node's log writes is not purged, and a component with such a member is joined, not
    /// replaced. The log keeps a change until every member that holds everything has read it
    /// (log truncation); then the identifier goes, or is replaced, at the next sync. (Dropping
    /// the change earlier, once only the core answering holds it, would leave a hole in this
    /// node's log that a member pulling from it later skips for good: the simulation found it.)
    func joinSiteUpdate(components: [[DocumentState]], purge: [Identifier], in context: WriteContext) throws -> SiteUpdateOutcome {
        let unsent = try unsentIdentifiers(in: context.txn)
        var outcome = SiteUpdateOutcome()
        let dropped = purge.filter { !unsent.contains($0) }
        outcome.kept = purge.count - dropped.count
        if !dropped.isEmpty {
            try context.purge(dropped)
            outcome.purged = Set(dropped).count
        }
        for state in components.joined() where try context.join(state) { outcome.joined += 1 }
        return outcome
    }

    /// The second step of a site update: of `components`, joined in an earlier transaction, those
    /// whose documents here still differ from the states sent and have no unsent member are
    /// purged and joined again. Returns how many identifiers were replaced.
    func replaceDiffering(components: [[DocumentState]], in context: WriteContext) throws -> Int {
        let unsent = try unsentIdentifiers(in: context.txn)
        // Every comparison reads the rows before anything is written: the context keeps some
        // writes until it finishes, where a read of the transaction would not see them.
        let differing = try components.filter { component in
            let members = component.compactMap(\.identifier)
            guard !members.contains(where: unsent.contains) else { return false }
            var held: [Identifier: Digest128] = [:]
            for state in try documentStates(of: members, in: context.txn) {
                if let identifier = state.identifier { held[identifier] = state.contentDigest }
            }
            return component.contains { state in state.identifier.map { held[$0] != state.contentDigest } ?? false }
        }
        var replaced = 0
        for component in differing {
            let members = component.compactMap(\.identifier)
            try context.purge(members)
            // A state sent is the whole document, its forget record too: one the cores no longer
            // hold (compacted) goes here as well, or this site would differ from them for good.
            for state in component { try context.txn.delete(.forget, state.forgetKey) }
            for state in component { _ = try context.join(state) }
            replaced += members.count
        }
        return replaced
    }

    /// The identifiers this node's own changes still in its log write: what some member may
    /// not have read yet. (A site's log holds little: its own changes, until every member has
    /// read them.)
    private func unsentIdentifiers(in reader: some StoreReading) throws -> Set<Identifier> {
        var unsent: Set<Identifier> = []
        for entry in try changes(after: 0, limit: .max, in: reader) where entry.origin == configuration.node {
            unsent.formUnion(entry.identifiersWritten)
        }
        return unsent
    }
}
