using System.Buffers;
using Google.Protobuf;
using Rbs.JBazel.Remote;
using Rbs.V1;

namespace Rbs.Tests.JBazel;

/// <summary>jbazel's own reading of ExecuteCommand's response frames: the bytes of every frame as the generated parser reads them.</summary>
public sealed class ExecuteCommandCallTests
{
    public static TheoryData<int> OutputSizes => [0, 1, 127, 128, 16_383, 16_384, 262_144, 2_097_152];

    [Theory]
    [MemberData(nameof(OutputSizes))]
    public void StdoutAndStderrFramesArriveByteForByte(int size)
    {
        var bytes = new byte[size];
        new Random(size).NextBytes(bytes);
        foreach (var frame in new[] { new ServerFrame { Stdout = ByteString.CopyFrom(bytes) }, new ServerFrame { Stderr = ByteString.CopyFrom(bytes) } })
        {
            // In one piece and split over many segments, as HTTP/2 hands it over.
            foreach (var payload in new[] { new ReadOnlySequence<byte>(frame.ToByteArray()), Segmented(frame.ToByteArray(), 3) })
            {
                using var received = ExecuteCommandCall.Parse(payload);
                Assert.Equal(frame.FrameCase, received.FrameCase);
                Assert.Null(received.Frame);
                Assert.True(received.Output.SequenceEqual(bytes));
            }
        }
    }

    [Fact]
    public void OtherFramesAreParsedAsTheGeneratedParserDoes()
    {
        var frames = new[]
        {
            new ServerFrame { Started = new CommandStarted { InvocationId = "i", Pid = 7, AgentId = "a" } },
            new ServerFrame { Exit = new ExitStatus { Code = 130, Signal = 2 } },
            new ServerFrame(),
        };
        foreach (var frame in frames)
        {
            using var received = ExecuteCommandCall.Parse(new ReadOnlySequence<byte>(frame.ToByteArray()));
            Assert.Equal(frame, received.Frame);
            Assert.Equal(frame.FrameCase, received.FrameCase);
        }
    }

    [Fact]
    public void AMessageWithMoreThanOneFieldIsLeftToTheParserWhoseLastFieldWins()
    {
        // Protobuf lets a oneof appear twice in one message; the last one wins. Not a plain output frame.
        var twice = new ServerFrame { Stdout = ByteString.CopyFromUtf8("first") }.ToByteArray()
            .Concat(new ServerFrame { Stderr = ByteString.CopyFromUtf8("second") }.ToByteArray()).ToArray();
        using var received = ExecuteCommandCall.Parse(new ReadOnlySequence<byte>(twice));
        Assert.NotNull(received.Frame);
        Assert.Equal(ServerFrame.FrameOneofCase.Stderr, received.FrameCase);
        Assert.Equal("second", received.Frame!.Stderr.ToStringUtf8());
    }

    [Fact]
    public void ATruncatedFrameIsRefusedAsTheParserRefusesIt()
    {
        var frame = new ServerFrame { Stdout = ByteString.CopyFromUtf8("cut short") }.ToByteArray();
        Assert.Throws<InvalidProtocolBufferException>(() => ExecuteCommandCall.Parse(new ReadOnlySequence<byte>(frame.AsMemory(0, frame.Length - 1))));
    }

    private static ReadOnlySequence<byte> Segmented(byte[] bytes, int segmentSize)
    {
        Segment? first = null, last = null;
        for (var offset = 0; offset < bytes.Length; offset += segmentSize)
        {
            var piece = bytes.AsMemory(offset, Math.Min(segmentSize, bytes.Length - offset));
            last = last is null ? first = new Segment(piece, 0) : last.Append(piece);
        }

        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
