using Rbs.Shared.Text;

namespace Rbs.Tests.Shared.Text;

public sealed class ByteSizeTests
{
    // Each caller's spelling as it printed before the copies were merged: jbazel's outputs line ("0.#", "B"), its sync
    // line ("0.0", "B") and the agent's sync errors ("0.#", "bytes").
    [Theory]
    [InlineData(0L, "0.#", "B", "0 B")]
    [InlineData(1023L, "0.#", "B", "1023 B")]
    [InlineData(1024L, "0.#", "B", "1 KiB")]
    [InlineData(1536L, "0.#", "B", "1.5 KiB")]
    [InlineData((1L << 20) - 1, "0.#", "B", "1024 KiB")]
    [InlineData(5L << 20, "0.#", "B", "5 MiB")]
    [InlineData(3L << 30, "0.#", "B", "3 GiB")]
    [InlineData(1000L, "0.0", "B", "1000 B")]
    [InlineData(1024L, "0.0", "B", "1.0 KiB")]
    [InlineData((5L << 20) + (1L << 19), "0.0", "B", "5.5 MiB")]
    [InlineData(2L << 30, "0.0", "B", "2.0 GiB")]
    [InlineData(512L, "0.#", "bytes", "512 bytes")]
    [InlineData(100L << 20, "0.#", "bytes", "100 MiB")]
    public void CountIsInTheLargestUnitItReaches(long bytes, string fraction, string bytesUnit, string expected) =>
        Assert.Equal(expected, ByteSize.Format(bytes, fraction, bytesUnit));
}
