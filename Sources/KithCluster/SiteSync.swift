import KithCRDT
import KithProfile
import KithStore

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

        public init(send: [[Identifier]], purge: [Identifier]) {
            self.send = send
            self.purge = purge
        }
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

    /// What a core sends a site for one sync: the answer, and the projected states it names.
    public struct Update: Sendable {
        public var answer: Answer
        public var states: [Identifier: DocumentState]
        /// Every identifier whose component was looked at: those held have a state in `states`.
        public var looked: Set<Identifier>

        /// The states of the components to send, component by component, until `budget` bytes
        /// (at least one component goes); and the first member of each left for a later sync.
        public func components(budget: Int) -> (components: [[DocumentState]], left: [Identifier]) {
            var components: [[DocumentState]] = [], left: [Identifier] = []
            var bytes = 0
            for members in answer.send {
                let component = members.compactMap { states[$0] }
                let size = component.reduce(0) { $0 + $1.encoded().count }
                if bytes + size > budget && !components.isEmpty {
                    left.append(members[0])
                    continue
                }
                bytes += size
                components.append(component)
            }
            return (components, left)
        }
    }

    /// The update for a site with `holdings` that `reported` what it holds, looking at the
    /// components of `candidates` (what it reported, and what changed or was swept since) as
    /// `store` holds them at `now`. `unchanged`: reported documents the caller knows are held
    /// with these projected digests (nothing of theirs changed since it last looked), not looked
    /// at again unless a candidate's component holds them. Reads the store; decides nothing the
    /// store does not say.
    public static func update(
        for holdings: SiteHoldings, reported: [HeldDocument], candidates: [Identifier], unchanged: [Identifier: Digest128] = [:],
        in store: any ReplicaStore, now: Int64
    ) throws -> Update {
        let needsSeen = holdings.scope.needsSeenBy
        var looked: Set<Identifier> = []
        var held: [HeldComponent] = []
        var states: [Identifier: DocumentState] = [:]
        for candidate in candidates where !looked.contains(candidate) {
            guard let component = try store.scopeComponent(of: candidate, withSeenBy: needsSeen) else {
                looked.insert(candidate)
                continue
            }
            looked.formUnion(component.view.members)
            guard let (members, projection) = holdings.held(component, now: now) else { continue }
            var digests: [Identifier: Digest128] = [:]
            for state in try store.documentStates(of: members) {
                guard let state = try state.projected(by: projection), let identifier = state.identifier else { continue }
                digests[identifier] = state.contentDigest
                states[identifier] = state
            }
            held.append(HeldComponent(members: digests))
        }
        for (identifier, digest) in unchanged where !looked.contains(identifier) { held.append(HeldComponent(members: [identifier: digest])) }
        var answer = answer(reported: reported, held: held)
        // A document to purge whose customer this core erased goes to the site as the forget
        // record alone (never the rows: what is held now may be outside the site's scope), a
        // component of its own. Joining it drops what the site holds of the customer dated at
        // or before the erasure, and the entries of its log that name them, even those no
        // member has read yet, which a purge leaves until every member has: a member away past
        // the window would read them from the site's log after the cores compacted the record,
        // and bring the customer back.
        for identifier in answer.purge {
            guard let state = try store.documentStates(of: [identifier]).first, let record = state.forgotten else { continue }
            states[identifier] = DocumentState(forgetKey: state.forgetKey, identifier: nil, forgotten: record, rows: [])
            answer.send.append([identifier])
        }
        answer.send.sort { $0.lexicographicallyPrecedes($1) }
        return Update(answer: answer, states: states, looked: looked)
    }
}

extension Scope {
    /// Whether deciding needs who accepted a component's messages (a `seen` clause).
    var needsSeenBy: Bool {
        guard case .only(let clauses) = self else { return false }
        return clauses.contains { if case .seen = $0 { true } else { false } }
    }
}
