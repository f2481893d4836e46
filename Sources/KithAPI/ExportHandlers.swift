import KithHTTP
import KithJSON
import KithPolicy
import KithProfile

/// Walks over every profile: the bulk export, which goes through the privacy model as a
/// profile read does, and the count of consent names, which holds no personal data.
extension NodeAPI {
    /// `?purpose=P&limit=1..10000&cursor=…`: one page of profiles as NDJSON, each as a read for
    /// purpose `P` shows it (withheld and masked fields, restricted profiles as the policy says)
    /// and each written to the read audit. `Kith-Next` carries the cursor of the next page
    /// (absent on the last). A purpose is required, even of a token that holds only one.
    func adminExport(_ call: RouteCall) {
        let (request, respond, principal) = (call.request, call.respond, call.caller)
        let query = request.queryItems
        guard let requested = query["purpose"] else {
            return respond(.error(400, code: "purpose_required", message: "an export reads for a purpose: name one with ?purpose="))
        }
        let purpose: String
        do { purpose = try ReadDecision.purpose(policy: policy, principal: principal, requested: requested) } catch {
            return respond(Self.refusal(error))
        }
        let page: (limit: Int, after: Identifier?)
        switch walkPage(query) {
        case .success(let found): page = found
        case .failure(let refusal): return respond(refusal.response)
        }
        respond(
            Self.attempt {
                // Where the change feed takes over from this page: taken before the page is
                // read, so every change the page may lack comes after it (docs/feed.md).
                let feed = FeedTokenText.text(try feedTokenNow())
                let views = try store.profiles(after: page.after, limit: page.limit).map(readable)
                var body: [UInt8] = []
                for view in views {
                    let consent = ConsentState(view.head, vocabulary: policy.consentVocabulary)
                    let decision = try ReadDecision(policy: policy, principal: principal, requestedPurpose: purpose, consent: consent)
                    var renderer = PolicyRenderer(decision: decision)
                    body += renderer.profile(view)
                    body.append(UInt8(ascii: "\n"))
                    try recordRead(principal, purpose, "export", view.members, renderer.outcome)
                }
                let headers = [HTTPHeader("Content-Type", "application/x-ndjson"), HTTPHeader("Kith-Feed-Token", feed)]
                return try nextPage(HTTPResponse(status: 200, headers: headers, body: body), after: views, limit: page.limit)
            })
    }

    /// `?limit=1..10000&cursor=…`: how many profiles of one page hold a consent decision under
    /// each name clients sent (`{"names": {"Advertising": 12}}`), for checking a policy's consent
    /// vocabulary against the store (`kith policy check --store`). Names and counts only.
    func adminConsentNames(_ call: RouteCall) {
        let page: (limit: Int, after: Identifier?)
        switch walkPage(call.request.queryItems) {
        case .success(let found): page = found
        case .failure(let refusal): return call.respond(refusal.response)
        }
        call.respond(
            Self.attempt {
                let views = try store.profiles(after: page.after, limit: page.limit)
                var counts: [String: Int] = [:]
                for view in views {
                    for (name, _) in view.head.consent.pairs where !name.hasPrefix(ConsentDecision.reservedPrefix) { counts[name, default: 0] += 1 }
                }
                let response = HTTPResponse.json(
                    200,
                    Self.object { object in
                        object.member("names") { writer in
                            writer.writeObject { names in
                                for name in counts.keys.sorted() { names.member(name, integer: Int64(counts[name]!)) }
                            }
                        }
                    })
                return try nextPage(response, after: views, limit: page.limit)
            })
    }

    /// `response` with `Kith-Next` naming where the walk goes on after `views`, unless the page
    /// came back short (the last one).
    private func nextPage(_ response: HTTPResponse, after views: [ProfileView], limit: Int) throws -> HTTPResponse {
        guard views.count == limit, let last = views.last else { return response }
        var response = response
        response.headers.append(HTTPHeader("Kith-Next", try exportCursor.token(after: last.canonical)))
        return response
    }

    /// A walk's page: `limit` (1 to 10,000, 1,000 by default) and where the cursor says the last
    /// page ended.
    private func walkPage(_ query: [String: String]) -> Result<(limit: Int, after: Identifier?), WalkRefusal> {
        let limit = query["limit"].flatMap(Int.init) ?? 1_000
        guard (1...10_000).contains(limit) else {
            return .failure(WalkRefusal(response: .error(400, code: "invalid_query", message: "limit must be 1 to 10000")))
        }
        guard let token = query["cursor"] else { return .success((limit, nil)) }
        guard let after = exportCursor.identifier(from: token) else {
            return .failure(WalkRefusal(response: .error(400, code: "invalid_cursor", message: "cursor is not one this cluster returned")))
        }
        return .success((limit, after))
    }
}

/// A page of a walk that cannot be served, with the answer that says why.
struct WalkRefusal: Error {
    var response: HTTPResponse
}
