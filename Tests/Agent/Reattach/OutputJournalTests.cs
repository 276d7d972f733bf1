using Rbs.Agent.Execution.Reattach;

namespace Rbs.Tests.Agent.Reattach;

/// <summary>
/// The reattach journal on its own: pooled memory, spilling and acknowledgements never change a byte the client gets,
/// and memory the reader is still writing is never handed to another append.
/// </summary>
public sealed class OutputJournalTests : IDisposable
{
    private readonly string _spill = Path.Combine(Path.GetTempPath(), "rbs-journal-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_spill))
        {
            Directory.Delete(_spill, recursive: true);
        }
    }

    [Fact]
    public void ChunksReadWhileAcknowledgedAndSpilledArriveByteExactAndInOrder()
    {
        // 64 KiB in memory: most of the 4 MiB goes through the spill file while the reader lags behind.
        using var journal = new OutputJournal(memoryLimit: 64 * 1024, spillLimit: 64 * 1024 * 1024, _spill);
        var expectedStdout = new MemoryStream();
        var expectedStderr = new MemoryStream();
        var stdout = new MemoryStream();
        var stderr = new MemoryStream();
        var cursor = journal.BeginRead(0, 0)!;
        var random = new Random(7);
        for (var i = 0; i < 400; i++)
        {
            var chunk = new byte[random.Next(1, 20_000)];
            random.NextBytes(chunk);
            var isStdout = i % 3 != 0;
            Assert.True(journal.Append(isStdout, chunk));
            (isStdout ? expectedStdout : expectedStderr).Write(chunk);
            if (i % 7 == 0)
            {
                Drain(journal, cursor, stdout, stderr);
                journal.Acknowledge(stdout.Length, stderr.Length);
            }
        }

        Drain(journal, cursor, stdout, stderr);
        Assert.Equal(expectedStdout.ToArray(), stdout.ToArray());
        Assert.Equal(expectedStderr.ToArray(), stderr.ToArray());
    }

    [Fact]
    public void MemoryTheReaderIsWritingIsNotReusedWhenAnAckDropsIt()
    {
        using var journal = new OutputJournal(memoryLimit: 8 * 1024 * 1024, spillLimit: 0, _spill);
        var cursor = journal.BeginRead(0, 0)!;
        var first = Enumerable.Repeat((byte)'a', 100_000).ToArray();
        Assert.True(journal.Append(stdout: true, first));
        Assert.True(journal.TryRead(cursor, out _, out var inFlight, out _));

        // A client that acknowledges what is still being written: the entry goes, its memory must not be reused yet.
        journal.Acknowledge(first.Length, 0);
        for (var i = 0; i < 8; i++)
        {
            Assert.True(journal.Append(stdout: true, Enumerable.Repeat((byte)'b', 100_000).ToArray()));
        }

        Assert.True(inFlight.Span.SequenceEqual(first), "an append overwrote the bytes the reader was still writing");
        journal.Sent(cursor);
    }

    private static void Drain(OutputJournal journal, OutputJournal.Cursor cursor, MemoryStream stdout, MemoryStream stderr)
    {
        while (journal.TryRead(cursor, out var isStdout, out var bytes, out _))
        {
            (isStdout ? stdout : stderr).Write(bytes.Span);
            journal.Sent(cursor);
        }
    }
}
