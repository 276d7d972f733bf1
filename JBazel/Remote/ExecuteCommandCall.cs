using System.Buffers;
using Google.Protobuf;
using Grpc.Core;
using Rbs.V1;

namespace Rbs.JBazel.Remote;

/// <summary>
/// A frame of the agent's ExecuteCommand response stream as jbazel reads it: a stdout or stderr frame's bytes in a
/// pooled buffer (<see cref="Output"/>), anything else as the parsed <see cref="ServerFrame"/>. Dispose it once its
/// bytes are written: the buffer goes back to the pool.
/// </summary>
internal sealed class ReceivedFrame : IDisposable
{
    private byte[]? _rented;
    private readonly int _length;

    public ReceivedFrame(ServerFrame frame) => Frame = frame;

    public ReceivedFrame(ServerFrame.FrameOneofCase output, byte[] rented, int length)
    {
        OutputCase = output;
        _rented = rented;
        _length = length;
    }

    /// <summary>The parsed frame, or null for a stdout/stderr frame (see <see cref="Output"/>).</summary>
    public ServerFrame? Frame { get; }

    /// <summary><see cref="ServerFrame.FrameOneofCase.Stdout"/> or <c>Stderr</c> for an output frame, else None.</summary>
    public ServerFrame.FrameOneofCase OutputCase { get; }

    public ReadOnlySpan<byte> Output => _rented.AsSpan(0, _length);

    public ServerFrame.FrameOneofCase FrameCase => Frame?.FrameCase ?? OutputCase;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _rented, null) is { } rented)
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
    }
}

/// <summary>
/// <c>rbs.v1.Agent/ExecuteCommand</c> with a response marshaller that reads stdout and stderr frames into pooled
/// buffers: the generated one copies every output frame (up to 256 KiB) into a fresh array, which on a 1 GiB
/// stream is a GiB of allocation, page faults and garbage collections for jbazel (bench/README.md, "1 GiB
/// stdout"). Same method, same wire bytes; frames other than plain output go through the generated parser.
/// </summary>
internal static class ExecuteCommandCall
{
    // Tags of ServerFrame's `bytes stdout = 2` and `bytes stderr = 3` (wire type 2, length-delimited).
    private const byte StdoutTag = (2 << 3) | 2;
    private const byte StderrTag = (3 << 3) | 2;

    private static readonly Marshaller<ClientFrame> s_requests = Marshallers.Create<ClientFrame>(
        (frame, context) =>
        {
            context.SetPayloadLength(frame.CalculateSize());
            frame.WriteTo(context.GetBufferWriter());
            context.Complete();
        },
        context => ClientFrame.Parser.ParseFrom(context.PayloadAsReadOnlySequence()));

    private static readonly Marshaller<ReceivedFrame> s_responses = Marshallers.Create<ReceivedFrame>(
        (_, _) => throw new NotSupportedException("jbazel never sends a server frame"),
        context => Parse(context.PayloadAsReadOnlySequence()));

    private static readonly Method<ClientFrame, ReceivedFrame> s_method = new(
        MethodType.DuplexStreaming,
        V1.Agent.Descriptor.FullName,
        V1.Agent.Descriptor.FindMethodByName("ExecuteCommand").Name,
        s_requests,
        s_responses);

    public static AsyncDuplexStreamingCall<ClientFrame, ReceivedFrame> Start(CallInvoker invoker, Metadata headers, CancellationToken cancellationToken) =>
        invoker.AsyncDuplexStreamingCall(s_method, host: null, new CallOptions(headers, cancellationToken: cancellationToken));

    /// <summary>A message that is exactly one stdout or stderr field is copied into a pooled buffer; the rest is parsed.</summary>
    internal static ReceivedFrame Parse(ReadOnlySequence<byte> payload)
    {
        if (TryReadOutputHeader(payload, out var output, out var headerLength, out var length))
        {
            var rented = ArrayPool<byte>.Shared.Rent(Math.Max(length, 1));
            payload.Slice(headerLength, length).CopyTo(rented);
            return new ReceivedFrame(output, rented, length);
        }

        return new ReceivedFrame(ServerFrame.Parser.ParseFrom(payload));
    }

    private static bool TryReadOutputHeader(ReadOnlySequence<byte> payload, out ServerFrame.FrameOneofCase output, out int headerLength, out int length)
    {
        output = ServerFrame.FrameOneofCase.None;
        headerLength = 0;
        length = 0;
        Span<byte> header = stackalloc byte[6];
        var available = (int)Math.Min(payload.Length, header.Length);
        payload.Slice(0, available).CopyTo(header);
        if (available < 2 || (header[0] != StdoutTag && header[0] != StderrTag))
        {
            return false;
        }

        // The length: a base-128 varint of at most 5 bytes (a frame is far below 2 GiB).
        ulong value = 0;
        var i = 1;
        for (var shift = 0; ; shift += 7, i++)
        {
            if (i >= available)
            {
                return false;
            }

            value |= (ulong)(header[i] & 0x7f) << shift;
            if ((header[i] & 0x80) == 0)
            {
                break;
            }
        }

        headerLength = i + 1;
        // Exactly one field: anything after it (a repeated oneof member, an unknown field) is left to the parser.
        if (value != (ulong)(payload.Length - headerLength) || value > int.MaxValue)
        {
            return false;
        }

        output = header[0] == StdoutTag ? ServerFrame.FrameOneofCase.Stdout : ServerFrame.FrameOneofCase.Stderr;
        length = (int)value;
        return true;
    }
}
