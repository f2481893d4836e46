import Foundation
import KithCompression
import KithHTTP
import KithJSON
import KithPolicy
import KithProfile
import Testing

@testable import KithAPI

/// Segment's tracking API and the profile resources, in process (once real-process tests;
/// what only a process shows — restart, kill -9, backup files, the CLI, logs — stays there).
@Suite("Ingest and reads, in process")
struct IngestAndReadTests {
    func read(_ test: TestAPI, _ resource: String) -> HTTPResponse? {
        test.call("GET", "/v1/profiles/\(resource)\(resource.contains("?") ? "&" : "?")purpose=support", role: .admin)
    }

    @Test func ingestThenReadByAnyIdentifier() throws {
        let test = try TestAPI()
        let identify = #"{"userId":"u-1","anonymousId":"a-1","traits":{"email":"Ana@Example.com","name":"Ana"},"messageId":"m1"}"#
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        let batch =
            #"{"batch":[{"type":"track","anonymousId":"a-1","event":"Order Completed","properties":{"revenue":19.99},"messageId":"m2"},{"type":"track","userId":"u-1","event":"Order Completed","properties":{"revenue":5},"messageId":"m3"}]}"#
        #expect(test.ingest("/v1/batch", batch)?.status == 200)
        #expect(test.ingest("/v1/batch", batch)?.status == 200)  // a client retry: counted once
        let profile = try #require(read(test, "email:ana%40example.com"))
        #expect(profile.status == 200 && profile.header("Request-Id") != nil)
        #expect(profile.text.contains(#""id":"user_id:u-1""#))
        #expect(profile.text.contains(#""Order Completed":{"count":2,"revenue":24.99}"#))
        #expect(read(test, "user_id:nobody")?.status == 404)
        #expect(test.call("GET", "/v1/profiles/user_id:u-1")?.status == 401)
    }

    @Test func everyResponseCarriesARequestIdOfItsOwn() throws {
        let test = try TestAPI()
        let ids = (0..<500).compactMap { _ in read(test, "user_id:nobody")?.header("Request-Id") }
        #expect(ids.count == 500 && Set(ids).count == 500)
        #expect(ids.allSatisfy { (1...16).contains($0.count) && UInt64($0, radix: 16) != nil })
    }

    @Test func basicAuthorizationIsReadAsClientsSendIt() throws {
        let key = Data("wk:".utf8).base64EncodedString()
        for header in ["Basic \(key)", "basic \(key)", "BASIC   \(key)\t ", "bAsIc \(key)"] {
            #expect(NodeAPI.basicCredentials(header) == Data("wk:".utf8), "\(header)")
        }
        for header in ["Bearer \(key)", "Basic", "Basic ", "Basic not*base64", "Basic\(key)", ""] {
            #expect(NodeAPI.basicCredentials(header) == nil, "\(header)")
        }
        // The scheme in any case reaches the key check, which then decides.
        let test = try TestAPI()
        let lower = test.send(
            "POST", "/v1/track", headers: [HTTPHeader("Authorization", "basic " + Data("\(TestAPI.writeKey):".utf8).base64EncodedString())],
            body: Array(#"{"userId":"u-1","event":"E"}"#.utf8))
        #expect(lower?.status == 200)
    }

    @Test func refusesBadIngestWithSegmentStyleErrors() throws {
        let test = try TestAPI()
        let badKey = test.send(
            "POST", "/v1/track", headers: [HTTPHeader("Authorization", "Basic YmFkOg==")], body: Array(#"{"userId":"u-1","event":"E"}"#.utf8))
        #expect(badKey?.status == 401 && badKey?.json?["code"] == "invalid_write_key")
        #expect(test.ingest("/v1/track", "{not json")?.json?["code"] == "invalid_json")
        #expect(test.ingest("/v1/track", #"{"event":"E"}"#)?.status == 400)
        // One bad message refuses the whole batch: nothing of it is stored.
        let batch = #"{"batch":[{"type":"track","userId":"u-9","event":"E","messageId":"ok"},{"type":"track","event":"no user"}]}"#
        let refused = try #require(test.ingest("/v1/batch", batch))
        #expect(refused.status == 400 && refused.json?["code"] == "missing_field" && refused.text.contains("message 1"))
        #expect(read(test, "user_id:u-9")?.status == 404)
        let large = #"{"userId":"u-1","event":"E","properties":{"x":""# + String(repeating: "y", count: 40_000) + #""}}"#
        #expect(test.ingest("/v1/track", large)?.json?["code"] == "payload_too_large")
        #expect(test.ingest("/v1/batch", #"{"batch":{}}"#)?.json?["code"] == "invalid_request")
        let tooMany = #"{"batch":["# + Array(repeating: #"{"type":"track","userId":"u","event":"E"}"#, count: 2_501).joined(separator: ",") + "]}"
        #expect(test.ingest("/v1/batch", tooMany)?.json?["code"] == "payload_too_large")
        #expect(test.ingest("/v1/track", Array(repeating: 0x20, count: 500 * 1024 + 1))?.json?["code"] == "payload_too_large")
    }

    @Test func batchContextAppliesToEveryCall() throws {
        let test = try TestAPI()
        let batch =
            #"{"context":{"channel":"kiosk","consent":{"categoryPreferences":{"Ads":false}}},"batch":[{"type":"identify","userId":"u-c","traits":{"a":1},"messageId":"c1","timestamp":"2025-01-01T00:00:02Z"},{"type":"track","userId":"u-c","event":"E","messageId":"c2","context":{"channel":"web"},"timestamp":"2025-01-01T00:00:01Z"}]}"#
        #expect(test.ingest("/v1/batch", batch)?.status == 200)
        let profile = try #require(read(test, "user_id:u-c")).text
        #expect(profile.contains(#""Ads":{"status":"denied""#))
        #expect(profile.contains(#""source":"kiosk""#), "the identify (later) took the batch's channel")
        #expect(profile.contains(#""channel":"web""#), "a message's own context wins")
    }

    @Test func acceptsGzipBodiesAndTheWriteKeyInTheBody() throws {
        let test = try TestAPI()
        let body = Gzip.compress(Array(#"{"writeKey":"wk-test","userId":"u-2","traits":{"plan":"plus"},"messageId":"g1"}"#.utf8))
        #expect(test.send("POST", "/v1/identify", headers: [HTTPHeader("Content-Encoding", "gzip")], body: body)?.status == 200)
        #expect(read(test, "user_id:u-2")?.text.contains(#""plan":"plus""#) == true)
        let corrupt = test.ingest("/v1/identify", Array(body.dropLast(4)), headers: [HTTPHeader("Content-Encoding", "gzip")])
        #expect(corrupt?.status == 400 && corrupt?.json?["code"] == "invalid_gzip")
        let bomb = Gzip.compress(Array(repeating: 0x20, count: 600 * 1024))
        #expect(test.ingest("/v1/identify", bomb, headers: [HTTPHeader("Content-Encoding", "GZIP")])?.json?["code"] == "payload_too_large")
    }

    @Test func profileResourcesEventPagesAndUnmerge() throws {
        let test = try TestAPI()
        let identify = #"{"userId":"u-1","anonymousId":"a-1","traits":{"name":"Ana"},"messageId":"i1","timestamp":"2025-01-01T00:00:00Z"}"#
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        let events = (0..<12).map {
            #"{"type":"track","userId":"u-1","event":"E","messageId":"e\#($0)","timestamp":"2025-01-01T00:00:\#($0 < 10 ? "0" : "")\#($0)Z"}"#
        }
        #expect(test.ingest("/v1/batch", #"{"batch":[\#(events.joined(separator: ","))]}"#)?.status == 200)
        #expect(read(test, "user_id:u-1/traits")?.text == #"{"purpose":"support","traits":{"name":"Ana"},"withheld":[],"masked":[]}"#)
        #expect(
            read(test, "user_id:u-1/identifiers")?.text
                == #"{"purpose":"support","identifiers":{"user_id":["u-1"],"anonymous_id":["a-1"]},"withheld":[],"masked":[]}"#)

        var seen: [String] = []
        var cursor: String?
        repeat {
            let page = try #require(read(test, "user_id:u-1/events?limit=5" + (cursor.map { "&cursor=\($0)" } ?? "")))
            let json = try #require(page.json)
            seen += (json["events"]?.arrayValue ?? []).compactMap { $0["messageId"]?.stringValue }
            cursor = json["cursor"]?["next"]?.stringValue
        } while cursor != nil && seen.count < 20
        #expect(seen == (0..<12).reversed().map { "e\($0)" })
        #expect(read(test, "user_id:u-1/events?limit=0")?.errorCode == "invalid_query")
        #expect(read(test, "user_id:u-1/events?cursor=garbage")?.errorCode == "invalid_query")
        #expect(test.call("GET", "/v1/profiles/user_id:u-1/links", role: .admin)?.text.contains(#""active":true"#) == true)

        #expect(test.call("DELETE", "/v1/profiles/user_id:u-1/links/anonymous_id:a-1", role: .admin)?.status == 200)
        #expect(read(test, "anonymous_id:a-1")?.text.contains(#""id":"anonymous_id:a-1""#) == true)
        #expect(test.call("DELETE", "/v1/profiles/user_id:u-1/links/email:x@y.z", role: .admin)?.status == 404)
        #expect(test.call("DELETE", "/v1/profiles/user_id:u-1/links/nonsense", role: .admin)?.errorCode == "invalid_identifier")
    }

    @Test func requestHistogramsCountEachRequestOnce() {
        let metrics = NodeMetrics()
        // One on a bucket's bound: it counts in that bucket (le: less than or equal).
        for (status, seconds) in [(200, 0.0004), (200, 0.004), (404, 0.25), (200, 0.004)] {
            metrics.record(route: "/v1/profiles/{identifier}", status: status, seconds: seconds)
        }
        let text = metrics.prometheusText()
        let route = #"route="/v1/profiles/{identifier}""#
        for line in [
            #"kith_http_requests_total{\#(route),status="200"} 3"#, #"kith_http_requests_total{\#(route),status="404"} 1"#,
            #"kith_http_request_duration_seconds_bucket{\#(route),le="0.0005"} 1"#,
            #"kith_http_request_duration_seconds_bucket{\#(route),le="0.005"} 3"#,
            #"kith_http_request_duration_seconds_bucket{\#(route),le="0.1"} 3"#,
            #"kith_http_request_duration_seconds_bucket{\#(route),le="0.25"} 4"#,
            #"kith_http_request_duration_seconds_bucket{\#(route),le="+Inf"} 4"#,
            #"kith_http_request_duration_seconds_count{\#(route)} 4"#,
        ] {
            #expect(text.contains(line + "\n"), "\(line)")
        }
    }

    @Test func statusMetricsAndHealth() throws {
        let test = try TestAPI()
        #expect(test.ingest("/v1/identify", #"{"userId":"u-1","messageId":"s1"}"#)?.status == 200)
        test.host.monotonic.add(7_000_000_000, ordering: .relaxed)
        let status = try #require(test.call("GET", "/v1/admin/status", role: .admin)?.json)
        #expect(status["node"] == "api-test" && status["uptimeSeconds"] == 7 && status["commits"] == 1 && status["committedMessages"] == 1)
        #expect(status["openConnections"] == 3 && status["clock"] == nil, "a node alone has no clock check")
        let metrics = try #require(test.call("GET", "/metrics", role: .admin)).text
        #expect(metrics.contains(#"kith_http_requests_total{route="/v1/identify",status="200"} 1"#))
        #expect(metrics.contains("kith_ingest_messages_total 1") && metrics.contains("kith_applied_messages_total 1"))
        #expect(test.call("GET", "/healthz")?.json?["node"] == "api-test")
        #expect(test.call("GET", "/readyz")?.status == 200)
        test.api.stop()
        #expect(test.call("GET", "/readyz")?.errorCode == "stopping")
    }

    @Test func exportPagesThroughEveryProfile() throws {
        let test = try TestAPI()
        for index in 0..<5 { #expect(test.ingest("/v1/identify", #"{"userId":"u-\#(index)","messageId":"x\#(index)"}"#)?.status == 200) }
        var ids: [String] = []
        var cursor: String?
        repeat {
            let page = try #require(
                test.call("GET", "/v1/admin/export?purpose=support&limit=2" + (cursor.map { "&cursor=\($0)" } ?? ""), role: .admin))
            #expect(page.status == 200 && page.header("Content-Type") == "application/x-ndjson")
            ids += page.text.split(separator: "\n").compactMap { try? JSONParser.parse(Array($0.utf8))["id"]?.stringValue }  // nil: fails below
            cursor = page.header("Kith-Next")
            // The cursor names no customer.
            #expect(cursor.map { !$0.contains("u-") && !$0.contains("user_id") } ?? true)
        } while cursor != nil && ids.count < 10
        #expect(ids == (0..<5).map { "user_id:u-\($0)" })
        #expect(test.call("GET", "/v1/admin/export?purpose=support&cursor=user_id:u-1", role: .admin)?.errorCode == "invalid_cursor")
        #expect(test.call("GET", "/v1/admin/export?purpose=support&limit=0", role: .admin)?.errorCode == "invalid_query")
    }

    /// A bulk export shows each profile as a read for its purpose does, writes each to the read
    /// audit, and is refused without a purpose.
    @Test func exportGoesThroughThePrivacyModel() throws {
        let test = try TestAPI()
        let identify = #"{"userId":"u-1","traits":{"email":"ana@example.com","name":"Ana","plan":"plus"},"messageId":"p1"}"#
        #expect(test.ingest("/v1/identify", identify)?.status == 200)
        #expect(test.ingest("/v1/identify", #"{"userId":"u-2","traits":{"name":"Ben"},"messageId":"p2"}"#)?.status == 200)
        #expect(test.call("POST", "/v1/profiles/user_id:u-2/restrict", role: .privacy)?.status == 200)

        #expect(test.call("GET", "/v1/admin/export", role: .admin)?.errorCode == "purpose_required")
        #expect(test.call("GET", "/v1/admin/export?purpose=nonsense", role: .admin)?.errorCode == "unknown_purpose")
        #expect(test.call("GET", "/v1/admin/export?purpose=support", role: .reader)?.status == 403)
        for purpose in ["support", "analytics", "personalization"] {
            let before = test.audit.records.count
            let export = try #require(test.call("GET", "/v1/admin/export?purpose=\(purpose)", role: .admin))
            #expect(export.status == 200, "\(export.text)")
            let lines = export.text.split(separator: "\n").map(String.init)
            let exported = test.audit.records.dropFirst(before)
            #expect(exported.count == 2 && exported.allSatisfy { $0.purpose == purpose && $0.resource == "export" }, "\(exported)")
            // Each line is what a read of that profile for the purpose returns.
            for (index, user) in ["u-1", "u-2"].enumerated() {
                let read = test.call("GET", "/v1/profiles/user_id:\(user)?purpose=\(purpose)", role: .admin)
                #expect(lines.count == 2 && read?.text == lines[index], "\(purpose) \(user)")
            }
            if purpose != "support" { #expect(!export.text.contains("ana@example.com"), "\(purpose): \(export.text)") }
            #expect(!export.text.contains("Ben"), "a restricted profile is exported as a read shows it: \(export.text)")
        }
    }

    /// The consent names clients used, counted over the profiles (no personal data), page by page.
    @Test func consentNamesAreCountedOverEveryProfile() throws {
        let test = try TestAPI()
        let messages = [
            #"{"userId":"u-1","messageId":"c1","context":{"consent":{"categoryPreferences":{"Advertising":false,"Analytics":true}}}}"#,
            #"{"userId":"u-2","messageId":"c2","context":{"consent":{"categoryPreferences":{"Analytics":true}}}}"#,
            #"{"userId":"u-3","messageId":"c3","traits":{"name":"Cy"}}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/identify", message)?.status == 200) }
        var counts: [String: Int] = [:]
        var cursor: String?
        var pages = 0
        repeat {
            let page = try #require(test.call("GET", "/v1/admin/consent-names?limit=2" + (cursor.map { "&cursor=\($0)" } ?? ""), role: .privacy))
            guard case .object(let names)? = page.json?["names"] else { Issue.record("no names: \(page.text)"); return }
            for member in names.members {
                guard case .number(let count) = member.value else { continue }  // not a count: the expectation below fails
                counts[member.key, default: 0] += Int(count.literal) ?? 0
            }
            cursor = page.header("Kith-Next")
            pages += 1
        } while cursor != nil && pages < 5
        #expect(counts == ["Advertising": 1, "Analytics": 2] && pages == 2, "\(counts) in \(pages) pages")
    }
}

/// Every touchpoint joins the single view: identifiers beyond user and anonymous ids, and reads,
/// unmerge, export and erasure by any kind.
@Suite("Identifier kinds, in process")
struct IdentifierKindTests {
    static let britain = IdentifierSources.builtIn.adding(
        [IdentifierSources.Source(path: "traits.loyaltyPhone", kind: .phone)!], externalIdTypes: ["pos_device": .deviceId],
        phoneRegion: PhoneNumber.Region(code: "GB"))

    /// A POS message known only by a phone, a call-centre message by the national form of it,
    /// and a web identify carrying it: one profile, read the same by each.
    @Test func touchpointsKnowingTheCustomerDifferentlyMeetInOneProfile() throws {
        let test = try TestAPI(identifierSources: Self.britain)
        let messages = [
            #"{"type":"track","event":"Order Completed","context":{"externalIds":[{"id":"till-4","type":"pos_device","collection":"users","encoding":"none"}],"traits":{"phone":"+44 20 7946 0000"}}}"#,
            #"{"type":"track","event":"Call","context":{"traits":{"phone":"020 7946 0000"}}}"#,
            #"{"type":"identify","userId":"u-web","traits":{"email":"Ana@Example.com","loyaltyPhone":"(020) 7946-0000"}}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/batch", #"{"batch":[\#(message)]}"#)?.status == 200) }
        for target in [
            "phone:%2B442079460000", "phone:%2B44%2020%207946%200000", "phone:020%207946%200000", "email:ana%40example.com", "user_id:u-web",
            "device_id:till-4",
        ] {
            let read = test.call("GET", "/v1/profiles/\(target)?purpose=support", role: .reader)
            #expect(read?.json?["id"] == "user_id:u-web", "\(target): \(read?.text ?? "no answer")")
        }
        let identifiers = test.call("GET", "/v1/profiles/phone:%2B442079460000/identifiers?purpose=support", role: .reader)?.json
        #expect(identifiers?["identifiers"]?["phone"] == ["+442079460000"] && identifiers?["identifiers"]?["device_id"] == ["till-4"])
        #expect(test.call("GET", "/v1/profiles/phone:%2B442079460000/export", role: .privacy)?.status == 200)
        // The POS message linked its phone to the till.
        #expect(test.call("DELETE", "/v1/profiles/user_id:u-web/links/device_id:till-4", role: .admin)?.status == 404)
        #expect(test.call("DELETE", "/v1/profiles/phone:%2B442079460000/links/device_id:till-4", role: .admin)?.status == 200)
        #expect(test.call("GET", "/v1/profiles/device_id:till-4?purpose=support", role: .reader)?.json?["id"] == "device_id:till-4")
        #expect(test.call("DELETE", "/v1/profiles/phone:020%207946%200000", role: .privacy)?.json?["identifiers"] == 3)
        #expect(test.call("GET", "/v1/profiles/email:ana%40example.com?purpose=support", role: .reader)?.status == 404)
    }

    /// A loyalty card as a kind of its own: read, unmerged, exported and erased by it, in its
    /// value form whatever way the path writes it.
    @Test func aCustomKindWorksEverywhereABuiltInOneDoes() throws {
        let card = IdentifierKind(custom: "loyalty_card")!
        let sources = Self.britain.adding(
            [IdentifierSources.Source(path: "traits.loyaltyCard", kind: card)!], externalIdTypes: ["pos_card": card], phoneRegion: nil,
            customKinds: [card: .digits])
        let test = try TestAPI(identifierSources: sources)
        let messages = [
            #"{"type":"track","event":"Order Completed","context":{"externalIds":[{"id":"1234 5678","type":"pos_card","collection":"users","encoding":"none"}]}}"#,
            #"{"type":"identify","anonymousId":"a-web","traits":{"loyaltyCard":"1234-5678","email":"ana@example.com"}}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/batch", #"{"batch":[\#(message)]}"#)?.status == 200) }
        for target in ["loyalty_card:12345678", "loyalty_card:1234%205678", "loyalty_card:1234-5678", "email:ana%40example.com"] {
            let read = test.call("GET", "/v1/profiles/\(target)/identifiers?purpose=support", role: .reader)
            #expect(read?.json?["identifiers"]?["loyalty_card"] == ["12345678"], "\(target): \(read?.text ?? "no answer")")
        }
        #expect(test.call("GET", "/v1/profiles/loyalty_card:12ab?purpose=support", role: .reader)?.errorCode == "invalid_identifier")
        let unknown = test.call("GET", "/v1/profiles/member_no:1?purpose=support", role: .reader)
        #expect(unknown?.json?["error"]?["message"]?.stringValue?.contains("anonymous_id, loyalty_card, group_id") == true)
        #expect(test.call("GET", "/v1/profiles/loyalty_card:12345678/export", role: .privacy)?.status == 200)
        #expect(test.call("DELETE", "/v1/profiles/anonymous_id:a-web/links/loyalty_card:12345678", role: .admin)?.status == 200)
        #expect(test.call("GET", "/v1/profiles/loyalty_card:12345678?purpose=support", role: .reader)?.json?["id"] == "loyalty_card:12345678")
        #expect(test.call("DELETE", "/v1/profiles/loyalty_card:1234%205678", role: .privacy)?.json?["identifiers"] == 1)
        #expect(test.call("GET", "/v1/profiles/loyalty_card:12345678?purpose=support", role: .reader)?.status == 404)
        #expect(test.call("GET", "/v1/profiles/email:ana%40example.com?purpose=support", role: .reader)?.status == 200)
    }

    @Test func unknownKindsAreToldTheKindsThereAre() throws {
        let test = try TestAPI()
        let answer = try #require(test.call("GET", "/v1/profiles/loyalty_card:123?purpose=support", role: .reader))
        #expect(answer.status == 400 && answer.errorCode == "unknown_identifier_kind")
        #expect(answer.json?["error"]?["message"]?.stringValue?.hasSuffix("user_id, email, phone, device_id, anonymous_id, group_id") == true)
        // Without a region a national number names no phone identifier.
        #expect(test.call("GET", "/v1/profiles/phone:020%207946%200000?purpose=support", role: .reader)?.errorCode == "invalid_identifier")
    }
}

/// Groups (accounts, households): a group call's traits go to the group's own document, read
/// through the policy like a profile; the person's profile lists the group.
@Suite("Groups, in process")
struct GroupTests {
    @Test func aGroupCallKeepsItsTraitsInTheGroupsDocument() throws {
        let test = try TestAPI()
        let call =
            #"{"type":"group","userId":"u-9","groupId":"acme","messageId":"g-1","traits":{"name":"Acme Ltd","plan":"enterprise","employees":120}}"#
        #expect(test.ingest("/v1/batch", #"{"batch":[\#(call)]}"#)?.status == 200)
        #expect(test.ingest("/v1/group", call)?.status == 200, "a retry is one change")
        let group = try #require(test.call("GET", "/v1/groups/acme?purpose=support", role: .reader))
        #expect(group.status == 200 && group.json?["id"] == "group_id:acme" && group.json?["traits"]?["name"] == "Acme Ltd")
        #expect(group.json?["traits"]?["employees"] == 120)
        // The person holds the membership, not the group's traits.
        let person = try #require(test.call("GET", "/v1/profiles/user_id:u-9?purpose=support", role: .reader)?.json)
        #expect(person["groups"] == ["acme"] && person["traits"]?["plan"] == nil)
        // The policy applies: the built-in analytics purpose withholds fields it does not name.
        let analytics = test.call("GET", "/v1/groups/acme?purpose=analytics", role: .reader)
        #expect(analytics?.status == 200 && analytics?.text.contains("Acme Ltd") == false)
        // A later call changes the traits; erasing the group leaves the person.
        test.host.wall.add(1_000, ordering: .relaxed)
        #expect(test.ingest("/v1/group", #"{"userId":"u-2","groupId":"acme","traits":{"plan":"team"}}"#)?.status == 200)
        #expect(test.call("GET", "/v1/groups/acme?purpose=support", role: .reader)?.json?["traits"]?["plan"] == "team")
        #expect(test.call("DELETE", "/v1/profiles/group_id:acme", role: .privacy)?.status == 200)
        #expect(test.call("GET", "/v1/groups/acme?purpose=support", role: .reader)?.status == 404)
        #expect(test.call("GET", "/v1/profiles/user_id:u-9?purpose=support", role: .reader)?.status == 200)
        #expect(test.call("GET", "/v1/groups/%00?purpose=support", role: .reader)?.errorCode == "invalid_identifier")
    }
}

/// A node with `maxEventAge` refuses a batch holding a message dated older, Segment-style, and
/// takes it within the age.
@Suite("The oldest date ingest takes, in process")
struct MaximumEventAgeTests {
    @Test func aBatchWithAMessageTooOldIsRefused() throws {
        let test = try TestAPI(maxEventAge: 30 * 86_400_000)
        let old = #"{"type":"track","userId":"u-old","event":"E","timestamp":"2020-01-01T00:00:00Z"}"#
        let fresh = #"{"type":"track","userId":"u-new","event":"E"}"#
        let refused = try #require(test.ingest("/v1/batch", #"{"batch":[\#(fresh),\#(old)]}"#))
        #expect(refused.status == 400 && refused.text.contains("timestamp"), "\(refused.text)")
        #expect(test.call("GET", "/v1/profiles/user_id:u-new?purpose=support", role: .reader)?.status == 404, "the whole batch is refused")
        #expect(test.ingest("/v1/track", fresh)?.status == 200)
    }
}
