//! Remote functions: registration under a stable name and typed calls.
//!
//! A function is registered once per process with [`function`] (or [`try_function`] for one
//! that returns `Result`), into the registry of `invoke` under its [`FunctionId`]: a closure
//! over argument bytes that decodes them as the parameter types, calls the function and
//! encodes its result. The traits here turn a call site's values and refs into argument
//! specs, and argument bytes back into values.

use std::fmt::Display;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::error::{FailureKind, Result};
use crate::ids::FunctionId;
use crate::invoke::{encode_result, register, Failure, FnEntry};
use crate::object::{ArgSpec, ObjectRef};
use crate::options::Options;

/// A tuple of argument types that can be decoded from argument bytes.
pub trait Arguments: Sized + 'static {
    /// Number of arguments.
    const ARITY: usize;
    /// Decodes one value per input.
    ///
    /// # Errors
    /// A wrong number of inputs, or bytes that do not decode as the parameter's type.
    fn decode(inputs: &[&[u8]]) -> std::result::Result<Self, String>;
}

/// One argument at a call site: a value of the parameter's type, or a ref to one
/// (the task then runs once the object is ready, and reads it).
pub trait IntoArg<T> {
    #[doc(hidden)]
    fn into_arg(self) -> Result<ArgSpecPub>;
}

/// Opaque argument spec (public only because [`IntoArg`] mentions it).
#[doc(hidden)]
pub struct ArgSpecPub(pub(crate) ArgSpec);

impl<T: Serialize> IntoArg<T> for T {
    fn into_arg(self) -> Result<ArgSpecPub> {
        Ok(ArgSpecPub(ArgSpec::Value(codec::encode(&self)?)))
    }
}
impl<T> IntoArg<T> for ObjectRef<T> {
    fn into_arg(self) -> Result<ArgSpecPub> {
        Ok(ArgSpecPub(ArgSpec::Ref(self.slot)))
    }
}
impl<T> IntoArg<T> for &ObjectRef<T> {
    fn into_arg(self) -> Result<ArgSpecPub> {
        Ok(ArgSpecPub(ArgSpec::Ref(self.slot.clone())))
    }
}

/// The arguments of a call, as a tuple: `()`, `(a,)`, `(a, b)`, ... up to 8.
pub trait IntoArgs<Args> {
    #[doc(hidden)]
    fn into_args(self) -> Result<Vec<ArgSpecPub>>;
}

/// A plain function or closure callable with a tuple of arguments.
pub trait Callable<Args, R>: Send + Sync + 'static {
    /// Calls it.
    fn call(&self, args: Args) -> R;
}

/// A closure over `&mut S` plus arguments: an actor method.
pub trait MethodCallable<S, Args, R>: Send + Sync + 'static {
    /// Calls it on the actor's state.
    fn call(&self, state: &mut S, args: Args) -> R;
}

macro_rules! arity {
    ($n:expr; $($T:ident $X:ident),*) => {
        impl<$($T: DeserializeOwned + 'static),*> Arguments for ($($T,)*) {
            const ARITY: usize = $n;
            #[allow(unused_variables, unused_mut, clippy::unused_unit)]
            fn decode(inputs: &[&[u8]]) -> std::result::Result<Self, String> {
                if inputs.len() != $n {
                    return Err(format!("expected {} argument(s), got {}", $n, inputs.len()));
                }
                let mut it = inputs.iter();
                Ok(($(
                    codec::decode::<$T>(it.next().expect("length checked")).map_err(|e| e.to_string())?,
                )*))
            }
        }

        impl<$($T, $X: IntoArg<$T>),*> IntoArgs<($($T,)*)> for ($($X,)*) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Result<Vec<ArgSpecPub>> {
                let ($($X,)*) = self;
                Ok(vec![$($X.into_arg()?),*])
            }
        }

        impl<Func, Ret, $($T),*> Callable<($($T,)*), Ret> for Func
        where
            Func: Fn($($T),*) -> Ret + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn call(&self, args: ($($T,)*)) -> Ret {
                let ($($T,)*) = args;
                self($($T),*)
            }
        }

        impl<Func, State, Ret, $($T),*> MethodCallable<State, ($($T,)*), Ret> for Func
        where
            Func: Fn(&mut State, $($T),*) -> Ret + Send + Sync + 'static,
        {
            #[allow(non_snake_case)]
            fn call(&self, state: &mut State, args: ($($T,)*)) -> Ret {
                let ($($T,)*) = args;
                self(state, $($T),*)
            }
        }
    };
}

arity!(0;);
arity!(1; A1 X1);
arity!(2; A1 X1, A2 X2);
arity!(3; A1 X1, A2 X2, A3 X3);
arity!(4; A1 X1, A2 X2, A3 X3, A4 X4);
arity!(5; A1 X1, A2 X2, A3 X3, A4 X4, A5 X5);
arity!(6; A1 X1, A2 X2, A3 X3, A4 X4, A5 X5, A6 X6);
arity!(7; A1 X1, A2 X2, A3 X3, A4 X4, A5 X5, A6 X6, A7 X7);
arity!(8; A1 X1, A2 X2, A3 X3, A4 X4, A5 X5, A6 X6, A7 X7, A8 X8);

pub(crate) fn decode_args<Args: Arguments>(inputs: &[&[u8]]) -> std::result::Result<Args, Failure> {
    Args::decode(inputs).map_err(|m| Failure::new(FailureKind::BadArguments, m))
}

/// A registered remote function: `Args` is the tuple of its parameter types, `R` its result.
pub struct RemoteFn<Args, R> {
    pub(crate) entry: &'static FnEntry,
    pub(crate) defaults: Options,
    _p: PhantomData<fn(Args) -> R>,
}

impl<Args, R> Clone for RemoteFn<Args, R> {
    fn clone(&self) -> Self {
        RemoteFn { entry: self.entry, defaults: self.defaults.clone(), _p: PhantomData }
    }
}

impl<Args, R> std::fmt::Debug for RemoteFn<Args, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteFn({})", self.entry.name)
    }
}

/// Registers `f` as the remote function `name`. A panic inside it fails the task.
///
/// ```
/// let add = rayhpc::function("doc.add", |a: i64, b: i64| a + b);
/// let rt = rayhpc::Runtime::init(rayhpc::Config::default()).unwrap();
/// let three = add.remote(&rt, (1, 2)).unwrap();
/// let six = add.remote(&rt, (&three, three.clone())).unwrap(); // refs as arguments
/// assert_eq!(rt.get(&six).unwrap(), 6);
/// rt.shutdown();
/// ```
pub fn function<Args, R, F>(name: &str, f: F) -> RemoteFn<Args, R>
where
    Args: Arguments,
    R: Serialize + 'static,
    F: Callable<Args, R>,
{
    let invoke = Box::new(move |inputs: &[&[u8]]| encode_result(&f.call(decode_args::<Args>(inputs)?)));
    RemoteFn { entry: register(name, invoke), defaults: Options::default(), _p: PhantomData }
}

/// Registers `f`, which returns `Result<R, E>`, as the remote function `name`: an `Err`
/// fails the task with the error's text (and is retried when `retry_exceptions` is set).
pub fn try_function<Args, R, E, F>(name: &str, f: F) -> RemoteFn<Args, R>
where
    Args: Arguments,
    R: Serialize + 'static,
    E: Display,
    F: Callable<Args, std::result::Result<R, E>>,
{
    let invoke = Box::new(move |inputs: &[&[u8]]| match f.call(decode_args::<Args>(inputs)?) {
        Ok(r) => encode_result(&r),
        Err(e) => Err(Failure::new(FailureKind::Error, e.to_string())),
    });
    RemoteFn { entry: register(name, invoke), defaults: Options::default(), _p: PhantomData }
}

impl<Args, R> RemoteFn<Args, R> {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The stable id of the function.
    pub fn id(&self) -> FunctionId {
        self.entry.id
    }

    /// The same function with other default options for every call.
    pub fn with_options(mut self, o: Options) -> Self {
        self.defaults = o;
        self
    }
}
