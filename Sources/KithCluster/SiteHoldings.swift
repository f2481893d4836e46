import KithPolicy
import KithProfile

/// What a scoped site holds, and what one change means for it (docs/replication.md, "Scope"):
/// a component is held when the site's scope holds it and the customer's consent now lets one of
/// the site's purposes see anything of them. Pure, like `Scope`: the core's shell carries the
/// plan out — sending projected document states, asking the site to purge.
public struct SiteHoldings: Sendable {
    public let scope: Scope
    public let purposes: [String]
    public let policy: Policy

    /// Refuses purposes the policy does not define (`ReadRefusal.unknownPurpose`).
    public init(scope: Scope, purposes: [String], policy: Policy) throws(ReadRefusal) {
        self.scope = scope
        self.purposes = purposes
        self.policy = policy
        _ = try SiteProjection(policy: policy, purposes: purposes, consent: ConsentState())
    }

    /// The projection of `component` for this site, under the consent its profile holds now.
    public func projection(of component: Scope.Component) -> SiteProjection { projection(under: consent(of: component)) }

    private func projection(under consent: ConsentState) -> SiteProjection {
        // The purposes were checked at init, and a consent state cannot make one unknown.
        do {
            return try SiteProjection(policy: policy, purposes: purposes, consent: consent)
        } catch {
            preconditionFailure("purposes \(purposes) checked at init were refused: \(error)")
        }
    }

    /// Whether the site holds `component` at `now`.
    public func holds(_ component: Scope.Component, now: Int64) -> Bool {
        scope.holds(component, now: now) && projection(of: component).holdsAnything
    }

    /// How `component`'s documents go to the site: through its projection, and only the
    /// documents of its own members (a link names its far end, which may be a customer the site
    /// does not hold).
    public func documentProjection(of component: Scope.Component) -> DocumentProjection {
        var projection = projection(of: component).documentProjection
        let kind = projection.holds
        let members = Set(component.view.members)
        projection.holds = { kind($0) && members.contains($0) }
        return projection
    }

    /// What one change means for the site: `before` and `after` are the components the change
    /// touched, before and after it. The members of components held after it are sent again (the
    /// change touched them). Purged first: the members of components held before and not after,
    /// and of components whose consent changed while held — a field a purpose may no longer see
    /// cannot be taken back by the join, so the component is purged and sent again.
    /// Only identifiers of kinds the site may hold are named: the others never reach it.
    public func plan(before: [Scope.Component], after: [Scope.Component], now: Int64) -> SitePlan {
        var deciding: [Identifier: Decisive] = [:]
        for component in held(before, now: now) {
            for member in component.sent { deciding[member] = component.decisive }
        }
        let heldAfter = held(after, now: now)
        var purge = Set(deciding.keys).subtracting(heldAfter.flatMap(\.sent))
        for component in heldAfter where component.sent.contains(where: { deciding[$0].map { $0 != component.decisive } ?? false }) {
            purge.formUnion(component.sent.filter { deciding[$0] != nil })
        }
        return SitePlan(purge: purge.sorted(), send: Array(Set(heldAfter.flatMap(\.sent))).sorted())
    }

    /// Of `components`, those the site holds at `now`, each with the members whose documents may
    /// go to it and the consent its projection depends on: every component's consent and
    /// projection worked out once.
    private func held(_ components: [Scope.Component], now: Int64) -> [(sent: [Identifier], decisive: Decisive)] {
        components.compactMap { component in
            guard scope.holds(component, now: now) else { return nil }
            let consent = consent(of: component)
            let projection = projection(under: consent)
            guard projection.holdsAnything else { return nil }
            return (component.view.members.filter { projection.holds($0.kind) }, Decisive(consent))
        }
    }

    private func consent(of component: Scope.Component) -> ConsentState {
        ConsentState(component.view.head, vocabulary: policy.consentVocabulary)
    }

    /// What of the consent a projection depends on: each category's decision and the
    /// restriction, not the names the decisions came under.
    private struct Decisive: Equatable {
        var decisions: [String: Bool]
        var restricted: Bool

        init(_ consent: ConsentState) {
            decisions = consent.decisions
            restricted = consent.restricted
        }
    }
}

/// One change's consequences for a scoped site (`SiteHoldings.plan`), sorted: purge first, then send.
public struct SitePlan: Equatable, Sendable {
    /// Identifiers whose documents the site must drop (`ProfileStore.purge`).
    public var purge: [Identifier]
    /// Identifiers whose documents, projected, go to the site.
    public var send: [Identifier]

    public init(purge: [Identifier], send: [Identifier]) {
        self.purge = purge
        self.send = send
    }
}
