using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Rbs.Tests.Infrastructure;

/// <summary>
/// The one way a test waits for something it expects to happen: poll the real condition, bounded, and fail naming
/// what was awaited. Never a fixed sleep in its place.
/// </summary>
internal static class TestWait
{
    /// <summary>How long a condition may take unless the caller says otherwise: 30 s, far beyond any healthy case.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    private static readonly TimeSpan s_pollInterval = TimeSpan.FromMilliseconds(20);

    /// <summary>Until <paramref name="condition"/> holds.</summary>
    public static Task EventuallyAsync(
        Func<bool> condition, string? what = null, TimeSpan? timeout = null,
        [CallerArgumentExpression(nameof(condition))] string expression = "") =>
        EventuallyAsync(() => Task.FromResult(condition() ? true : (bool?)null), what ?? expression, timeout);

    /// <summary>Until <paramref name="condition"/> (asynchronous, e.g. a database read) holds.</summary>
    public static Task EventuallyAsync(
        Func<Task<bool>> condition, string? what = null, TimeSpan? timeout = null,
        [CallerArgumentExpression(nameof(condition))] string expression = "") =>
        EventuallyAsync(async () => await condition() ? true : (bool?)null, what ?? expression, timeout);

    /// <summary>Until <paramref name="probe"/> returns a value (not null, not the type's default); returns it.</summary>
    public static async Task<T> EventuallyAsync<T>(
        Func<Task<T?>> probe, string? what = null, TimeSpan? timeout = null,
        [CallerArgumentExpression(nameof(probe))] string expression = "")
    {
        var limit = timeout ?? DefaultTimeout;
        var clock = Stopwatch.StartNew();
        while (true)
        {
            // A probe that hangs fails the wait as well, not the whole test run.
            var remaining = limit - clock.Elapsed;
            var value = await probe().WaitAsync(remaining > TimeSpan.Zero ? remaining : TimeSpan.FromMilliseconds(1));
            if (value is not null && !EqualityComparer<T>.Default.Equals(value, default))
            {
                return value;
            }

            if (clock.Elapsed >= limit)
            {
                Assert.Fail($"timed out after {limit.TotalSeconds:0.#} s waiting for {what ?? expression}");
            }

            await Task.Delay(s_pollInterval);
        }
    }

    /// <summary>Until <paramref name="probe"/> (synchronous) returns a value; returns it.</summary>
    public static Task<T> EventuallyAsync<T>(
        Func<T?> probe, string? what = null, TimeSpan? timeout = null,
        [CallerArgumentExpression(nameof(probe))] string expression = "") =>
        EventuallyAsync(() => Task.FromResult(probe()), what ?? expression, timeout);
}
