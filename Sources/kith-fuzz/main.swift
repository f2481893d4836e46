// kith-fuzz: libFuzzer harnesses for Kith's decoders. `make fuzz` builds it with
// -sanitize=fuzzer,address and runs each harness; see docs/testing.md.
//
//   kith-fuzz json|message|binary|http [libFuzzer options] [corpus directories]
//
// Every harness checks a property, not just "no crash": what parses must re-encode and parse back
// to the same value.
import CFuzzerDriver
import KithCRDT
import KithHTTP
import KithJSON
import KithProfile

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

nonisolated(unsafe) var harness: (UnsafeBufferPointer<UInt8>) -> Void = fuzzJSON

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    harness(UnsafeBufferPointer(start: data, count: size))
    return 0
}

let harnesses: [String: (UnsafeBufferPointer<UInt8>) -> Void] = [
    "json": fuzzJSON, "message": fuzzMessage, "binary": fuzzBinary, "http": fuzzHTTP,
]
var arguments = CommandLine.arguments
guard arguments.count >= 2, let chosen = harnesses[arguments[1]] else {
    let usage = "usage: kith-fuzz json|message|binary|http [libFuzzer options] [corpus...]\n"
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
