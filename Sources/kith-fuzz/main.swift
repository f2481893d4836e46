// kith-fuzz: libFuzzer harnesses for Kith's decoders. `make fuzz` builds it with
// -sanitize=fuzzer,address and runs each harness; see docs/testing.md.
//
//   kith-fuzz json|message|binary|http|frame|identifier [libFuzzer options] [corpus directories]
//
// Every harness checks a property, not just "no crash": what parses must re-encode and parse back
// to the same value. The inputs are random, so a decode that fails (`try?` giving nil) is an
// expected outcome here, never an error to report: only a trap or a value that does not round-trip
// is a finding.
import CFuzzerDriver
import KithCRDT
import KithHTTP
import KithJSON
import KithProfile
import KithReplication

#if canImport(Glibc)
    import Glibc
#endif

/// JSON text: parse; whatever parses must write and parse back to the same value.
func fuzzJSON(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let value = try? JSONParser.parse(bytes) else { return }
    let text = value.jsonText
    guard let again = try? JSONParser.parse(text), again == value else { fatalError("JSON did not round-trip: \(text)") }
    guard (try? JSONValue(decoding: value.encoded())) == value else { fatalError("JSON binary encoding did not round-trip") }
}

/// A Segment message: parse to a delta; a delta must round-trip through its stored encoding.
func fuzzMessage(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let json = try? JSONParser.parse(bytes) else { return }
    for type in [nil] + MessageType.allCases.map(Optional.some) {
        guard let delta = try? SegmentMessageParser().parse(json, defaultType: type, receivedAt: 1_760_000_000_000) else { continue }
        let encoded = ProfileFormat.encode(delta)
        guard (try? ProfileFormat.decode(ProfileDelta.self, from: encoded)) == delta else { fatalError("delta did not round-trip") }
        // A group call's change to the group's document round-trips too, and names only the group.
        guard let group = try? SegmentMessageParser().groupDelta(json, for: delta) else { continue }
        guard group.subject.kind == .groupId, group.links.isEmpty, group.messageId == delta.messageId + "#group" else { fatalError("group delta") }
        guard (try? ProfileFormat.decode(ProfileDelta.self, from: ProfileFormat.encode(group))) == group else {
            fatalError("group delta did not round-trip")
        }
    }
}

/// Stored records: arbitrary bytes must be refused or decode to a value that re-encodes the same.
func fuzzBinary(_ bytes: UnsafeBufferPointer<UInt8>) {
    let input = Array(bytes)
    if let view = try? ProfileFormat.decode(ProfileView.self, from: input) {
        guard (try? ProfileFormat.decode(ProfileView.self, from: ProfileFormat.encode(view))) == view else { fatalError("view") }
    }
    if let head = try? ProfileFormat.decode(SourceHead.self, from: input) {
        guard (try? ProfileFormat.decode(SourceHead.self, from: ProfileFormat.encode(head))) == head else { fatalError("head") }
    }
    if let delta = try? ProfileFormat.decode(ProfileDelta.self, from: input) {
        guard (try? ProfileFormat.decode(ProfileDelta.self, from: ProfileFormat.encode(delta))) == delta else { fatalError("delta") }
    }
}

/// HTTP requests: the same steps whether the bytes arrive at once or one at a time.
func fuzzHTTP(_ bytes: UnsafeBufferPointer<UInt8>) {
    func steps(_ pieces: [ArraySlice<UInt8>]) -> [HTTPRequestParser.Step] {
        var parser = HTTPRequestParser()
        var result: [HTTPRequestParser.Step] = []
        for piece in pieces {
            parser.append(piece)
            result += parser.drain()
            if case .failed? = result.last { return result }
        }
        return result
    }
    let input = Array(bytes)
    let whole = steps([input[...]])
    let bytewise = steps(input.indices.map { input[$0...$0] })
    guard whole == bytewise else { fatalError("HTTP parse depends on how the bytes were split") }
}

/// Tags the fuzzer can forge (a byte sum), so that it reaches the payload decoders; the real
/// HMAC is tested in KithReplicationTests. Never used outside this harness.
struct ForgeableAuthenticator: FrameAuthenticator {
    var sendingKeyId: UInt8 { 1 }
    func knows(keyId: UInt8) -> Bool { keyId == 1 }
    func tag(keyId: UInt8, _ message: [UInt8]) -> [UInt8] {
        [UInt8](repeating: message.reduce(0, &+), count: 32)
    }
    func verify(keyId: UInt8, _ message: [UInt8], tag: ArraySlice<UInt8>) -> Bool { Array(tag) == self.tag(keyId: keyId, message) }
}

/// Peer frames: the same frames (or the same refusal) however the bytes are split, and every
/// message that decodes re-encodes to a payload that decodes to the same message.
func fuzzFrame(_ bytes: UnsafeBufferPointer<UInt8>) {
    func frames(_ pieces: [ArraySlice<UInt8>]) -> ([Frame], FrameError?) {
        var decoder = FrameDecoder(authenticator: ForgeableAuthenticator(), nonce: [UInt8](repeating: 7, count: 16), maximumPayload: 1 << 16)
        var result: [Frame] = []
        do {
            for piece in pieces {
                decoder.append(piece)
                while let frame = try decoder.next() { result.append(frame) }
            }
        } catch { return (result, error) }
        return (result, nil)
    }
    let input = Array(bytes)
    let whole = frames([input[...]])
    let bytewise = frames(input.indices.map { input[$0...$0] })
    guard whole.0 == bytewise.0, (whole.1 == nil) == (bytewise.1 == nil) else { fatalError("frames depend on how the bytes were split") }
    for frame in whole.0 where frame.type != Frame.helloType {
        guard let message = try? PeerMessage(tag: frame.type, payload: frame.payload) else { continue }
        guard (try? PeerMessage(tag: message.tag, payload: message.encodePayload())) == message else { fatalError("message did not round-trip") }
    }
}

/// Identifier values: every kind's normal form is stable (normalising what it gives gives it
/// again, and it is the stored form the decoders accept); a phone number in any region comes out
/// as E.164 or not at all.
func fuzzIdentifier(_ bytes: UnsafeBufferPointer<UInt8>) {
    guard let text = String(validating: bytes, as: UTF8.self) else { return }
    for kind in IdentifierKind.builtIn + [IdentifierKind(custom: "loyalty_card")!] {
        guard let identifier = Identifier(kind: kind, value: text) else { continue }
        guard Identifier(kind: kind, value: identifier.value) == identifier else { fatalError("\(kind.name) normal form is not stable") }
        let stored = Array(identifier.storedValue.utf8)
        guard stored.withUnsafeBufferPointer({ Identifier.isStoredForm(code: kind.code, utf8: $0) }) else { fatalError("not a stored form") }
        guard Identifier(key: identifier.key) == identifier else { fatalError("\(identifier) does not round-trip through its key") }
    }
    for form in ValueForm.allCases {
        guard let value = form.normalized(text) else { continue }
        guard form.normalized(value) == value else { fatalError("value form \(form) is not stable") }
    }
    for region in [nil, PhoneNumber.Region(code: "GB"), PhoneNumber.Region(code: "US"), PhoneNumber.Region(code: "IT")] {
        guard let phone = PhoneNumber.normalized(text, region: region) else { continue }
        guard PhoneNumber.normalized(phone) == phone, phone.first == "+", (8...16).contains(phone.utf8.count),
            phone.utf8.dropFirst().allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
        else { fatalError("phone \(phone) is not E.164") }
    }
}

nonisolated(unsafe) var harness: (UnsafeBufferPointer<UInt8>) -> Void = fuzzJSON

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    harness(UnsafeBufferPointer(start: data, count: size))
    return 0
}

let harnesses: [String: (UnsafeBufferPointer<UInt8>) -> Void] = [
    "json": fuzzJSON, "message": fuzzMessage, "binary": fuzzBinary, "http": fuzzHTTP, "frame": fuzzFrame, "identifier": fuzzIdentifier,
]
var arguments = CommandLine.arguments
guard arguments.count >= 2, let chosen = harnesses[arguments[1]] else {
    let usage = "usage: kith-fuzz json|message|binary|http|frame|identifier [libFuzzer options] [corpus...]\n"
    _ = usage.withCString { write(2, $0, strlen($0)) }
    exit(64)
}
harness = chosen
arguments.remove(at: 1)
var argc = Int32(arguments.count)
var cStrings = arguments.map { strdup($0) } + [nil]
let status = cStrings.withUnsafeMutableBufferPointer { buffer -> Int32 in
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in
        harness(UnsafeBufferPointer(start: data, count: size))
        return 0
    }
}
exit(status)
