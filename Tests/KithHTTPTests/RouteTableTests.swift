import KithHTTP
import Testing

@Suite("Route table")
struct RouteTableTests {
    let table = RouteTable<Int>([
        .init("GET", "/v1/profiles/{identifier}", 1), .init("DELETE", "/v1/profiles/{identifier}", 2),
        .init("GET", "/v1/profiles/{identifier}/links", 3), .init("DELETE", "/v1/profiles/{identifier}/links/{other}", 4),
        .init("GET", "/v1/admin/status", 5), .init("GET", "/v1/{anything}", 6),
    ])

    @Test func matchesMethodPatternAndParameters() {
        guard case .found(let route, let parameters) = table.match(method: "DELETE", path: "/v1/profiles/user_id:u%2F1/links/email:a") else {
            Issue.record("no match")
            return
        }
        #expect(route.value == 4 && parameters["identifier"] == "user_id:u%2F1" && parameters["other"] == "email:a" && parameters["none"] == nil)
        // A literal listed first wins over a parameter that would also match.
        guard case .found(let status, _) = table.match(method: "GET", path: "/v1/admin/status") else {
            Issue.record("no match")
            return
        }
        #expect(status.value == 5)
    }

    @Test func otherMethodsAndUnknownPaths() {
        guard case .methodNotAllowed(let allowed, let pattern) = table.match(method: "PUT", path: "/v1/profiles/x") else {
            Issue.record("not 405")
            return
        }
        #expect(allowed == ["GET", "DELETE"] && pattern.description == "/v1/profiles/{identifier}")
        for path in ["/v1/profiles/x/y", "/v2/x", "/v1/profiles/", "/", "/v1/profiles//links"] {
            if case .notFound = table.match(method: "GET", path: Substring(path)) {} else { Issue.record("\(path) matched") }
        }
    }

    @Test func queryItemsAndPercentDecoding() {
        let request = HTTPRequest(method: "GET", target: "/x?purpose=support&name=a+b%21&empty&bad=%zz", version: .http11, headers: [], body: [])
        #expect(request.queryItems == ["purpose": "support", "name": "a b!", "empty": ""])
        #expect(HTTPRequest.percentDecoded("email:a%40example.com") == "email:a@example.com")
        #expect(HTTPRequest.percentDecoded("%e2%82%ac") == "€" && HTTPRequest.percentDecoded("%ff") == nil && HTTPRequest.percentDecoded("%4") == nil)
    }
}
