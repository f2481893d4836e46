import KithPolicy
import KithProfile

/// What a scoped site holds (docs/replication.md, "Scope"): a component is held when the site's
/// scope holds it and the customer's consent now lets one of the site's purposes see anything
/// of them; of a held component, the site holds the documents of the members whose kind it may
/// hold, each projected for its purposes. Pure, like `Scope`: a core answering a site's sync
/// decides with it (`SiteSync`).
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
    private func projection(of component: Scope.Component) -> SiteProjection {
        // The purposes were checked at init, and a consent state cannot make one unknown.
        do {
            return try SiteProjection(
                policy: policy, purposes: purposes, consent: ConsentState(component.view.head, vocabulary: policy.consentVocabulary))
        } catch {
            preconditionFailure("purposes \(purposes) checked at init were refused: \(error)")
        }
    }

    /// Whether the site holds `component` at `now`.
    public func holds(_ component: Scope.Component, now: Int64) -> Bool { held(component, now: now) != nil }

    /// What the site holds of `component` at `now`: the members whose documents go to it, and
    /// how they go (`documentProjection`); nil when it holds none of it.
    public func held(_ component: Scope.Component, now: Int64) -> (members: [Identifier], projection: DocumentProjection)? {
        guard scope.holds(component, now: now) else { return nil }
        let site = projection(of: component)
        guard site.holdsAnything else { return nil }
        let projection = documentProjection(site, component)
        return (component.view.members.filter(projection.holds), projection)
    }

    /// How `component`'s documents go to the site: through its projection, and only the
    /// documents of its own members (a link names its far end, which may be a customer the site
    /// does not hold).
    private func documentProjection(_ site: SiteProjection, _ component: Scope.Component) -> DocumentProjection {
        var projection = site.documentProjection
        let kind = projection.holds
        let members = Set(component.view.members)
        projection.holds = { kind($0) && members.contains($0) }
        return projection
    }
}
