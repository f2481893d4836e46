import Foundation
import KithHTTP
import KithJSON
import KithPolicy
import KithTestSupport
import Testing

@testable import KithAPI

/// Consent and purposes at read time, in process (the CLI's audit and export, and the node's
/// logs, are tested against a real process in PrivacyProcessTests).
@Suite("Consent and privacy at read time, in process")
struct PrivacyReadTests {
    static let canaries = PrivacyCanaries.values
    static let identify = PrivacyCanaries.identify
    static let path = "/v1/profiles/user_id:u-priv"

    /// One principal per role and purpose; each token's text is its name.
    func start() throws -> TestAPI {
        let test = try TestAPI(tokens: [
            .init(name: "bi", role: .reader, purposes: ["analytics"]), .init(name: "ads", role: .reader, purposes: ["advertising"]),
            .init(name: "crm", role: .reader, purposes: ["support", "advertising"]), .init(name: "dpo", role: .privacy, purposes: ["support"]),
            .init(name: "pipe", role: .ingest, purposes: []),
        ])
        #expect(test.ingest("/v1/identify", Self.identify)?.status == 200)
        return test
    }

    func leaks(_ response: HTTPResponse?, _ canary: String) -> Bool {
        guard let response else { return false }
        return response.text.contains(canary) || response.headers.contains { $0.value.contains(canary) }
    }

    @Test func purposesMaskWithholdAndTagWhatEachReaderSees() throws {
        let test = try start()
        // Analytics (its only purpose, implied): contact masked, demographic shown, unknown
        // fields (sensitive) withheld with a reason and without their value.
        let analytics = try #require(test.call("GET", Self.path, token: "bi"))
        #expect(analytics.status == 200)
        #expect(analytics.json?["traits"]?["email"] == "a***@example.com" && analytics.json?["traits"]?["phone"] == "+** **** ****23")
        #expect(analytics.json?["traits"]?["birthday"] == "1984-05-02" && analytics.json?["traits"]?["favouriteColour"] == nil)
        #expect(analytics.text.contains(#"{"field":"traits.favouriteColour","reason":"purpose_excludes_category","category":"sensitive"}"#))
        for canary in ["ana.canary@example.com", "+44 7700 900123", "teal-canary"] { #expect(!leaks(analytics, canary), "\(canary)") }
        let etag = try #require(analytics.header("ETag"))
        let again = try #require(test.call("GET", Self.path, token: "bi", headers: [HTTPHeader("If-None-Match", etag)]))
        #expect(again.status == 304 && again.body.isEmpty)

        // Advertising, denied by the customer: nothing but the reasons.
        let advertising = test.call("GET", Self.path, token: "ads")
        #expect(advertising?.status == 200)
        for canary in Self.canaries + ["gold"] { #expect(!leaks(advertising, canary), "\(canary) leaked to a denied purpose") }
        #expect(advertising?.text.contains(#""reason":"consent_denied""#) == true)
        #expect(advertising?.text.contains(#""consentCategory":"advertising""#) == true)
    }

    @Test func principalsNeedTheirPurposeAndRole() throws {
        let test = try start()
        #expect(test.call("GET", Self.path, token: "crm")?.errorCode == "purpose_required", "two purposes: one must be named")
        #expect(test.call("GET", Self.path + "?purpose=analytics", token: "crm")?.errorCode == "purpose_not_permitted")
        #expect(test.call("GET", Self.path + "?purpose=lunch", token: "crm")?.errorCode == "unknown_purpose")
        #expect(test.call("GET", Self.path + "?purpose=support", token: "crm")?.text.contains("ana.canary@example.com") == true)
        #expect(test.call("GET", Self.path, token: "pipe")?.status == 403, "an ingest token does not read")
        #expect(test.call("GET", Self.path, token: "nobody")?.status == 401)
        #expect(test.call("GET", Self.path, headers: [HTTPHeader("Authorization", "Bearer")])?.status == 401)
        #expect(test.call("GET", Self.path, headers: [HTTPHeader("Authorization", "bEaReR  bi ")])?.status == 200, "scheme in any case, spaces")
    }

    @Test func consentSetThroughTheAPIChangesWhatAdvertisingSees() throws {
        let test = try start()
        let consent = #"{"categoryPreferences":{"advertising":true},"source":"preference-centre"}"#
        #expect(test.call("PUT", Self.path + "/consent", token: "bi", body: consent)?.status == 403)
        let reserved = #"{"categoryPreferences":{"kith:processing":true}}"#
        #expect(test.call("PUT", Self.path + "/consent", token: "dpo", body: reserved)?.errorCode == "invalid_request")
        #expect(test.call("PUT", Self.path + "/consent", token: "dpo", body: "{}")?.errorCode == "invalid_request")
        let badTime = #"{"categoryPreferences":{"advertising":true},"timestamp":"yesterday"}"#
        #expect(test.call("PUT", Self.path + "/consent", token: "dpo", body: badTime)?.errorCode == "invalid_request")
        #expect(test.call("PUT", Self.path + "/consent", token: "dpo", body: consent)?.status == 200)
        let state = try #require(test.call("GET", Self.path + "/consent", token: "bi")).text
        #expect(state.contains(#""advertising":{"status":"granted""#) && state.contains("preference-centre"))
        #expect(state.contains(#""ad_user_data""#), "the consent categories' Google Consent Mode types")
        let granted = test.call("GET", Self.path, token: "ads")?.json
        #expect(granted?["traits"]?["email"] == "a***@example.com" && granted?["traits"]?["plan"] == "gold")
    }

    /// Segment's consent tooling sends capitalised category names, OneTrust its group ids:
    /// both decide the policy's categories; a name the policy does not map is shown and counted,
    /// never applied.
    @Test func consentUnderTheNamesTouchpointsSendIsApplied() throws {
        let test = try start()
        test.host.wall.add(1_000, ordering: .relaxed)
        let later = #"{"userId":"u-priv","context":{"consent":{"categoryPreferences":{"Advertising":true,"Newsletter":false}}}}"#
        #expect(test.ingest("/v1/identify", later)?.status == 200)
        #expect(test.call("GET", Self.path, token: "ads")?.json?["traits"]?["plan"] == "gold", "a capitalised grant shows the data")
        let consent = try #require(test.call("GET", Self.path + "/consent", token: "dpo")?.json)
        #expect(consent["categories"]?["advertising"]?["status"] == "granted" && consent["categories"]?["advertising"]?["decidedBy"] == "Advertising")
        #expect(consent["categories"]?["analytics"]?["status"] == "granted" && consent["categories"]?["functional"]?["status"] == "unknown")
        #expect(consent["unmapped"] == ["Newsletter"] && consent["consent"]?["Newsletter"]?["status"] == "denied")
        #expect(consent["mappings"]?["advertising"]?["aliases"]?.arrayValue?.contains("C0004") == true)
        test.host.wall.add(1_000, ordering: .relaxed)
        let denied = #"{"userId":"u-priv","context":{"consent":{"categoryPreferences":{"C0004":false}}}}"#
        #expect(test.ingest("/v1/identify", denied)?.status == 200)
        let read = test.call("GET", Self.path, token: "ads")
        #expect(read?.text.contains(#""reason":"consent_denied""#) == true && read?.text.contains(#""consentCategory":"advertising""#) == true)
        #expect(!leaks(read, "gold"))
        let metrics = test.call("GET", "/metrics", role: .admin)?.text ?? ""
        #expect(metrics.contains("kith_consent_unmapped_reads_total 2"), "two reads saw the unmapped name")
    }

    @Test func restrictionWithholdsFromEveryPurposeButThePrivacyRole() throws {
        let test = try start()
        #expect(test.call("POST", Self.path + "/restrict", token: "bi")?.status == 403)
        #expect(test.call("POST", Self.path + "/restrict", token: "dpo")?.status == 200)
        let restricted = test.call("GET", Self.path, token: "bi")
        #expect(restricted?.text.contains(#""reason":"restricted""#) == true && !leaks(restricted, "gold"))
        #expect(test.call("GET", Self.path, token: "dpo")?.text.contains("ana.canary@example.com") == true)
        #expect(test.call("DELETE", Self.path + "/restrict", token: "dpo")?.status == 200)
        #expect(test.call("GET", Self.path, token: "bi")?.text.contains("gold") == true)
    }

    /// The audit says who read what for which purpose, and never a value; the export holds
    /// everything, with every consent decision in order.
    @Test func theAuditAndTheExport() throws {
        let test = try start()
        #expect(test.call("GET", Self.path, token: "bi")?.status == 200)
        #expect(test.call("GET", Self.path, token: "ads")?.status == 200)
        #expect(
            test.call("PUT", Self.path + "/consent", token: "dpo", body: #"{"categoryPreferences":{"advertising":true},"source":"pc"}"#)?.status
                == 200)
        #expect(test.call("POST", Self.path + "/restrict", token: "dpo")?.status == 200)
        #expect(test.call("GET", Self.path, token: "bi")?.status == 200)
        #expect(test.call("DELETE", Self.path + "/restrict", token: "dpo")?.status == 200)
        let audit = try #require(test.call("GET", Self.path + "/audit", token: "dpo"))
        #expect(audit.status == 200 && audit.text.contains(#""principal":"bi","purpose":"analytics""#))
        #expect(audit.text.contains(#""principal":"ads","purpose":"advertising""#) && audit.text.contains(#""reason":"restricted""#))
        for canary in Self.canaries { #expect(!leaks(audit, canary)) }
        #expect(test.call("GET", Self.path + "/audit", token: "bi")?.status == 403)
        #expect(test.call("GET", Self.path + "/audit?limit=0", token: "dpo")?.errorCode == "invalid_query")

        let export = try #require(test.call("GET", Self.path + "/export", token: "dpo"))
        #expect(export.status == 200 && export.text.contains(#""principal":"ads""#))
        for canary in Self.canaries { #expect(export.text.contains(canary)) }
        let history = try #require(export.json?["consentHistory"]?.arrayValue)
        let decisions = history.map { change in
            (change["decisions"]?.objectValue?.members.map { "\($0.key)=\($0.value == .bool(true))" } ?? []).joined(separator: ",")
        }
        #expect(
            decisions == ["advertising=false,analytics=true", "advertising=true", "kith:processing=false", "kith:processing=true"], "\(decisions)")
        #expect(history[0]["messageId"] == "p-1" && history[0]["identifier"] == "user_id:u-priv" && history[1]["source"] == "pc")
    }

    @Test func erasureDropsLateArrivalsAndNewerDataStartsAfresh() throws {
        let test = try start()
        #expect(test.call("DELETE", Self.path, token: "bi")?.status == 403)
        let erased = test.call("DELETE", Self.path, token: "dpo")
        #expect(erased?.status == 200 && erased?.json?["erased"] == .bool(true) && erased?.json?["identifiers"] == 3, "user id, email and phone")
        #expect(test.call("GET", Self.path, token: "dpo")?.status == 404)
        // A retry of an old message (an edge site that was offline) is dropped.
        #expect(test.ingest("/v1/identify", Self.identify.replacingOccurrences(of: "p-1", with: "p-retry"))?.status == 200)
        #expect(test.call("GET", Self.path, token: "dpo")?.status == 404)
        // Newer data starts a new profile, with nothing of the old one.
        test.host.wall.add(1_000, ordering: .relaxed)
        #expect(test.ingest("/v1/identify", #"{"userId":"u-priv","messageId":"p-new","traits":{"plan":"new"}}"#)?.status == 200)
        let fresh = try #require(test.call("GET", Self.path, token: "dpo"))
        #expect(fresh.status == 200 && fresh.text.contains(#""plan":"new""#))
        for canary in Self.canaries { #expect(!leaks(fresh, canary)) }
        // The audit still answers for the identifier, by its keyed hash.
        #expect(test.call("GET", Self.path + "/audit", token: "dpo")?.status == 200)
        // Erasing an identifier this node has never seen is remembered all the same.
        #expect(test.call("DELETE", "/v1/profiles/user_id:never-seen", token: "dpo")?.status == 200)
        let late = #"{"userId":"never-seen","messageId":"late","timestamp":"2025-01-01T00:00:00Z","traits":{"a":1}}"#
        #expect(test.ingest("/v1/identify", late)?.status == 200)
        #expect(test.call("GET", "/v1/profiles/user_id:never-seen", token: "dpo")?.status == 404)
    }
}

/// The subject export says, for every trait and event, the purpose that keeps it and when it expires.
@Suite("Retention in the subject export, in process")
struct RetentionExportTests {
    @Test func theExportStatesEachFieldsRetention() throws {
        var policy = Policy.builtIn
        policy.retention.eventsByName["Order Completed"] = .init(millis: 2_557 * 86_400_000, purpose: "support")
        policy.retention.traitsByName["plan"] = .init(millis: 30 * 86_400_000, purpose: "support")
        policy.retention.messagesByType[.identify] = .init(millis: 730 * 86_400_000, purpose: "support")
        let test = try TestAPI(policy: policy)
        let consent = #""context":{"consent":{"categoryPreferences":{"Analytics":true}}}"#
        let messages = [
            #"{"type":"identify","userId":"u-x","traits":{"plan":"plus","city":"Leeds"},"messageId":"i-1","timestamp":"2026-01-01T00:00:00Z",\#(consent)}"#,
            #"{"type":"track","userId":"u-x","event":"Order Completed","messageId":"o-1","timestamp":"2026-01-02T00:00:00Z",\#(consent)}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/batch", #"{"batch":[\#(message)]}"#)?.status == 200) }
        let export = try #require(test.call("GET", "/v1/profiles/user_id:u-x/export", role: .privacy)?.json)
        let retention = try #require(export["retention"])
        #expect(retention["traits"]?["plan"]?["purpose"] == "support" && retention["traits"]?["plan"]?["days"] == 30)
        #expect(retention["traits"]?["plan"]?["expiresAt"] != nil && retention["traits"]?["city"]?["kept"] == "no rule")
        #expect(
            retention["events"]?["o-1"]?["days"] == 2557 && retention["events"]?["o-1"]?["expiresAt"]?.stringValue?.hasPrefix("2033-01-0") == true)
        // The consent history's records go with their messages: the identify's by the
        // messages rule, the order's by its event's.
        let history = try #require(retention["consentHistory"])
        #expect(history["i-1"]?["days"] == 730 && history["i-1"]?["expiresAt"]?.stringValue?.hasPrefix("2028-01-01") == true, "\(history)")
        #expect(history["o-1"]?["days"] == 2557 && history["o-1"]?["purpose"] == "support")
    }

    /// Reads never show what has expired, whether or not the sweep has dropped it yet: the
    /// profile, its traits and events, the bulk export and the change feed alike.
    @Test func readsLeaveOutWhatExpiredBeforeTheSweep() throws {
        var policy = Policy.builtIn
        policy.retention.eventsByName["Viewed"] = .init(millis: 30 * 86_400_000, purpose: "analytics")
        policy.retention.traitsByName["city"] = .init(millis: 90 * 86_400_000, purpose: "support")
        let test = try TestAPI(policy: policy)
        // The test host's clock is 2026-05-28: the city (January) and the view (January) have
        // expired; the plan (no rule) and the order (no rule) stay.
        let messages = [
            #"{"type":"identify","userId":"u-x","traits":{"city":"Leeds"},"messageId":"i-1","timestamp":"2026-01-01T00:00:00Z"}"#,
            #"{"type":"identify","userId":"u-x","traits":{"plan":"plus"},"messageId":"i-2","timestamp":"2026-05-01T00:00:00Z"}"#,
            #"{"type":"track","userId":"u-x","event":"Viewed","messageId":"v-1","timestamp":"2026-01-02T00:00:00Z"}"#,
            #"{"type":"track","userId":"u-x","event":"Order Completed","messageId":"o-1","timestamp":"2026-01-03T00:00:00Z"}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/batch", #"{"batch":[\#(message)]}"#)?.status == 200) }
        let reads = [
            "/v1/profiles/user_id:u-x?purpose=support", "/v1/profiles/user_id:u-x/traits?purpose=support",
            "/v1/profiles/user_id:u-x/events?purpose=support&limit=10", "/v1/admin/export?purpose=support",
            "/v1/changes?purpose=support&since=0&view=full",
        ]
        for read in reads {
            let text = try #require(test.call("GET", read, role: .admin)).text
            #expect(!text.contains("Leeds") && !text.contains("v-1"), "\(read): \(text)")
        }
        let profile = try #require(test.call("GET", reads[0], role: .admin)).text
        #expect(profile.contains(#""plan":"plus""#) && profile.contains("o-1"), "what no rule names stays: \(profile)")
        // The store still holds them until the sweep: the subject export says so.
        #expect(try #require(test.call("GET", "/v1/profiles/user_id:u-x/export", role: .privacy)).text.contains("Leeds"))
    }

    /// A consent grant kept past its rule lapses at read time: the customer reads as never
    /// asked (an opt-in purpose sees nothing), while a denial of the same age still denies.
    @Test func aLapsedGrantReadsAsNeverGiven() throws {
        var policy = Policy.builtIn
        for name in ["advertising", "c0004", "marketing"] {
            policy.retention.grantsByName[name] = .init(millis: 365 * 86_400_000, purpose: "advertising")
        }
        let test = try TestAPI(policy: policy)
        let messages = [
            #"{"type":"identify","userId":"u-old","traits":{"plan":"gold"},"messageId":"g-1","timestamp":"2025-01-01T00:00:00Z","context":{"consent":{"categoryPreferences":{"C0004":true}}}}"#,
            #"{"type":"identify","userId":"u-new","traits":{"plan":"gold"},"messageId":"g-2","timestamp":"2026-05-01T00:00:00Z","context":{"consent":{"categoryPreferences":{"Marketing":true}}}}"#,
        ]
        for message in messages { #expect(test.ingest("/v1/batch", #"{"batch":[\#(message)]}"#)?.status == 200) }
        let old = try #require(test.call("GET", "/v1/profiles/user_id:u-old?purpose=advertising", role: .admin))
        #expect(!old.text.contains("gold") && old.text.contains("consent_unknown"), "\(old.text)")
        let fresh = try #require(test.call("GET", "/v1/profiles/user_id:u-new?purpose=advertising", role: .admin))
        #expect(fresh.text.contains("gold"), "\(fresh.text)")
    }
}
